//! Exchange Web Services source (work in progress).
