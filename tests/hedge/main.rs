//! The hedge layer: each outcome rule, budgets, deadlines, replay, cancellation, readiness, and
//! the percentile delay, in paused time.

mod percentile;
mod readiness;
mod replay;
mod rules;
mod tail;
