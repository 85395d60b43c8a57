//! Sonde's expression language: compile and evaluate tracepoint expressions (work in progress, issue 3).
