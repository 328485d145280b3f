//! The registry over HTTP: liveness, readiness and health ([`HealthRoutes`]), and the opt-in admin
//! API ([`AdminRoutes`]). Both are plain tower services over `http` requests, mounted in an axum
//! `Router` with `route_service` or `nest_service` (or served by hyper directly).

use super::{Action, Applied, ControlError, Phase, Registry, Status};
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::task::{Context, Poll};
use tower::Service;

/// What the routes answer: a text or JSON body, which axum, hyper and any `http` server take as
/// it is (so the routes need only the `http` feature, not axum).
type Response = http::Response<String>;

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // A probe's answer is for now: no proxy may keep it.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn not_allowed(allow: &'static str) -> Response {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// `/live`, `/ready` and `/health` for a [`Registry`]: one service that answers by path, from
/// [`Registry::routes`].
///
/// | path | answer |
/// |---|---|
/// | `GET /live` | 200 while the process runs |
/// | `GET /ready` | 200 while serving and no [`Required`](super::Criticality::Required) component is down; 503 while starting (before [`Registry::start_serving`]), while draining (after [`Registry::drain`]), or when a required component is down |
/// | `GET /health` | the [`Snapshot`](super::Snapshot) as JSON: 200, or 503 when the overall status is down |
///
/// Any other path is 404, any method but `GET` and `HEAD` 405.
///
/// Do not serve `/health` on a public listener: its JSON shows the service's internals (its
/// dependencies, their failure rates, its limits), and `/ready`'s 503 body names the required
/// components that are down. Serve the probes on a port only the orchestrator and operators
/// reach, or put `/health` behind the service's own authentication. Mount it under each path,
/// or nest it under a prefix:
///
/// ```
/// use axum::{routing::get, Router};
/// use seawall::health::Registry;
///
/// let registry = Registry::new();
/// let routes = registry.routes();
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .route_service("/live", routes.clone())
///     .route_service("/ready", routes.clone())
///     .route_service("/health", routes.clone())
///     // or all three under a prefix: /ops/live, /ops/ready, /ops/health
///     .nest_service("/ops", routes);
/// registry.start_serving();
/// # drop(app);
/// ```
#[derive(Clone)]
pub struct HealthRoutes {
    registry: Registry,
}

impl HealthRoutes {
    pub(super) fn new(registry: Registry) -> Self {
        HealthRoutes { registry }
    }

    fn respond(&self, method: &Method, path: &str) -> Response {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        if !matches!(path, "/live" | "/ready" | "/health") {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if method != Method::GET && method != Method::HEAD {
            return not_allowed("GET, HEAD");
        }
        match path {
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" => self.ready(),
            _ => self.health(),
        }
    }

    fn ready(&self) -> Response {
        let snapshot = self.registry.snapshot();
        match snapshot.phase {
            Phase::Starting => return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            Phase::Draining => return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            Phase::Serving => {}
        }
        if snapshot.ready {
            return text(StatusCode::OK, "ready\n");
        }
        let mut body = String::from("required components down:");
        for component in &snapshot.components {
            if component.criticality == super::Criticality::Required
                && component.status == Status::Down
            {
                body.push(' ');
                body.push_str(&component.name);
            }
        }
        body.push('\n');
        text(StatusCode::SERVICE_UNAVAILABLE, body)
    }

    fn health(&self) -> Response {
        let snapshot = self.registry.snapshot();
        let status = if snapshot.status == Status::Down {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut response = text(status, snapshot.to_json());
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

impl fmt::Debug for HealthRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthRoutes")
            .field("registry", &self.registry)
            .finish()
    }
}

impl<B> Service<Request<B>> for HealthRoutes {
    type Response = Response;
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(req.method(), req.uri().path())))
    }
}

/// The header every admin request must carry (with any value): `seawall-admin`.
///
/// A browser sends a cross-site form's `POST` (or a `fetch` in `no-cors` mode) without asking
/// anyone, with the operator's cookies; it never adds a header of the page's own choosing without
/// first asking the server in a CORS preflight, which these routes do not answer. Requiring one
/// means that a page an operator visits cannot steer the layers through the operator's browser
/// (cross-site request forgery). Do not put a CORS layer that allows this header from other
/// origins in front of the admin routes.
pub const ADMIN_HEADER: &str = "seawall-admin";

/// The admin API of a [`Registry`], from [`Registry::admin_routes`]: changes the layers'
/// behaviour by hand, for incidents and maintenance.
///
/// **It has no authentication of its own.** Anyone who can reach it can take a dependency out of
/// service or let a flood through: mount it only behind the service's own authentication and
/// authorisation (or on a port that only operators reach), never beside the public routes as
/// they are. Every request must also carry the [`ADMIN_HEADER`] (`seawall-admin: 1`, say), so
/// that a browser cannot be made to send one from another site (cross-site request forgery):
/// `curl -X POST -H 'seawall-admin: 1' http://127.0.0.1:9090/admin/payments/force-open`.
///
/// | request | action | answer when done |
/// |---|---|---|
/// | `POST /{name}/force-open` | a breaker rejects every call ([`Action::ForceOpen`]) | 204 |
/// | `POST /{name}/force-closed` | a breaker closes, with an empty window ([`Action::ForceClosed`]) | 204 |
/// | `POST /{name}/reset` | a breaker is as new ([`Action::Reset`]) | 204 |
/// | `POST /{name}/limit/{n}` | a bulkhead's limit becomes `n`, capped at `bulkhead::MAX_CONCURRENT` ([`Action::SetLimit`]) | 200, with the limit applied: `{"limit":1000,"requested":1000,"capped":false}` |
///
/// Only breakers can be forced or reset, and only a bulkhead's limit can be set (an adaptive
/// limiter's is its algorithm's): any other kind of component answers 409. Other answers: 404
/// for an unknown component or path, 405 for a method other than `POST`, 403 without the
/// [`ADMIN_HEADER`], 400 for a limit that is not a whole number above zero written in plain
/// digits (a bulkhead's builder refuses zero too: a bulkhead with a limit of zero takes no call).
///
/// ```
/// use axum::{middleware, Router};
/// use seawall::health::Registry;
///
/// # async fn require_operator(
/// #     req: axum::extract::Request,
/// #     next: middleware::Next,
/// # ) -> axum::response::Response { next.run(req).await }
/// let registry = Registry::new();
/// let admin: Router = Router::new()
///     .nest_service("/admin", registry.admin_routes())
///     // The service's own authentication: without it, these routes are open to anyone.
///     .layer(middleware::from_fn(require_operator));
/// # drop(admin);
/// ```
#[derive(Clone)]
pub struct AdminRoutes {
    registry: Registry,
}

/// A limit from a path: plain ASCII digits (no sign, no spaces), above zero.
fn limit(n: &str) -> Option<u64> {
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok().filter(|&limit| limit > 0)
}

impl AdminRoutes {
    pub(super) fn new(registry: Registry) -> Self {
        AdminRoutes { registry }
    }

    fn respond(&self, method: &Method, headers: &http::HeaderMap, path: &str) -> Response {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let action = match parts.as_slice() {
            [_, "force-open"] => Ok(Action::ForceOpen),
            [_, "force-closed"] => Ok(Action::ForceClosed),
            [_, "reset"] => Ok(Action::Reset),
            [_, "limit", n] => limit(n).map(Action::SetLimit).ok_or(*n),
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        if method != Method::POST {
            return not_allowed("POST");
        }
        if !headers.contains_key(ADMIN_HEADER) {
            return text(
                StatusCode::FORBIDDEN,
                format!("admin requests must carry the {ADMIN_HEADER} header\n"),
            );
        }
        let action = match action {
            Ok(action) => action,
            Err(n) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("limit {n:?} is not a whole number above zero\n"),
                )
            }
        };
        match self.registry.control(parts[0], action) {
            Ok(applied) => {
                tracing::info!(
                    target: "seawall",
                    component = parts[0],
                    action = action.as_str(),
                    "health admin action"
                );
                match (action, applied) {
                    (Action::SetLimit(requested), Applied::Limit(limit)) => {
                        let body = format!(
                            "{{\"limit\":{limit},\"requested\":{requested},\"capped\":{}}}",
                            limit != requested
                        );
                        let mut response = text(StatusCode::OK, body);
                        response
                            .headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        response
                    }
                    _ => {
                        let mut response = text(StatusCode::NO_CONTENT, "");
                        response.headers_mut().remove(CONTENT_TYPE);
                        response
                    }
                }
            }
            Err(e @ ControlError::NotFound(_)) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
            Err(e) => text(StatusCode::CONFLICT, format!("{e}\n")),
        }
    }
}

impl fmt::Debug for AdminRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminRoutes")
            .field("registry", &self.registry)
            .finish()
    }
}

impl<B> Service<Request<B>> for AdminRoutes {
    type Response = Response;
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(
            req.method(),
            req.headers(),
            req.uri().path(),
        )))
    }
}
