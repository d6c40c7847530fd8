//! Semantic search: `genome.search` over a collection's pgvector HNSW index. The SQL side (the
//! index, the search functions) is src/search.sql.

use pgrx::prelude::*;

extension_sql_file!("search.sql", name = "search", requires = ["queue"]);
