//! Store conformance suite: see issue 4 (being written).
