//! The one module that spells `docker`.
