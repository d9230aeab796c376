//! Lossless, reversible edits of a compose file's build sections (placeholder).
