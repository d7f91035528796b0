//! Several nodes on one PostgreSQL database: see issue 4 (being written).
