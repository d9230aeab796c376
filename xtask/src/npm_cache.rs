//! npm cache holding every tarball of a lockfile (being built).
