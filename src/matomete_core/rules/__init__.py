"""The rules of SPEC.md as pure functions: facts in, a verdict out; no database, no clock."""
