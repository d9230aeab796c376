//! pip requirements files (placeholder).
