//! The export plan.
