//! A throwaway `redis-server` on a loopback port, for the tests that need a real Redis.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` process of the test's own, stopped when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

/// The server program: `SEAWALL_REDIS_SERVER`, else `redis-server` on the `PATH`.
fn program() -> String {
    std::env::var("SEAWALL_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

impl RedisServer {
    /// Starts a server on a free loopback port. When none can be started, says so on stderr and
    /// returns `None`, for the test to skip, unless `SEAWALL_REQUIRE_REDIS` is set (as CI sets
    /// it), in which case it panics: a test that needs Redis never passes without it there.
    pub fn start(test: &str) -> Option<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        match RedisServer::start_on(port) {
            Ok(server) => Some(server),
            Err(e) if std::env::var_os("SEAWALL_REQUIRE_REDIS").is_some() => {
                panic!(
                    "{test}: SEAWALL_REQUIRE_REDIS is set but {} could not start: {e}",
                    program()
                )
            }
            Err(e) => {
                eprintln!(
                    "SKIPPED {test}: no Redis server could be started ({}: {e}); install \
                     redis-server or set SEAWALL_REDIS_SERVER to run it",
                    program()
                );
                None
            }
        }
    }

    fn start_on(port: u16) -> std::io::Result<RedisServer> {
        let dir = std::env::temp_dir().join(format!("seawall-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut server = RedisServer {
            child: None,
            port,
            dir,
        };
        server.restart()?;
        Ok(server)
    }

    /// Starts the server again on the same port (after [`stop`](Self::stop)), with no data.
    pub fn restart(&mut self) -> std::io::Result<()> {
        let child = Command::new(program())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(std::io::Error::other(format!("exited at once: {status}")));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("did not listen within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the server, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
