//! The hedge layer: each outcome rule, budgets, deadlines, replay, cancellation, and the
//! percentile delay, in paused time.

mod percentile;
mod rules;
mod tail;
