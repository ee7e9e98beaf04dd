//! Discovery of traceable sites and the function record table (work in progress).
