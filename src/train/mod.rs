//! Training (train stage): numerics of one optimisation step — losses, optimisers, learning-rate schedules and the fp16 grad scaler.
pub mod amp;
pub mod loss;
pub mod optim;
pub mod schedule;
