//! The read-model schema, owned in one place.
//!
//! The projector writes the read models, query-api reads them and the tests inspect them; all three
//! take from here:
//! - [`schema`]: tables as data ([`Table`]: columns, keys, DDL), generation naming ([`table`],
//!   [`qualified`]), the pieces statements are built from, and [`schema::check_statement`];
//! - [`orders`] and [`order_history`]: each projection's tables, with a constant per column (a
//!   column renamed here is renamed in the DDL and in every statement built from the constant; a
//!   constant removed fails to compile wherever it was used);
//! - [`registry`]: the `projections`, `projection_offsets` and `projection_control` tables, [`ProjectionState`] and the reads of them ([`RegistryReader`]);
//! - [`ALL`]: every projection and its tables.
//!
//! The projector's and query-api's statements are checked against these tables by unit tests in
//! each crate (`check_statement`), and the registry tables against the migrations by a unit test
//! here, so a column named differently in two places fails `cargo test` rather than end to end.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod order_history;
pub mod orders;
pub mod registry;
pub mod schema;

pub use registry::{
    BuildKind, ControlState, ProjectionState, ReadError, ReadResult, RegistryReader, LIVE,
    REBUILDING, SHADOWING,
};
pub use schema::{check_statement, qualified, table, Column, Order, Table};

/// A projection's name and its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionSchema {
    /// Also names the registry row and the consumer groups.
    pub name: &'static str,
    pub tables: &'static [&'static Table],
    /// The tables' base names (generation `g` of `t` is [`table`]`(t, g)`), as [`Self::tables`].
    pub bases: &'static [&'static str],
}

impl ProjectionSchema {
    /// `CREATE TABLE IF NOT EXISTS` of each table of generation `generation`.
    pub fn ddl(&self, generation: i32) -> Vec<String> {
        self.tables.iter().map(|t| t.ddl(generation)).collect()
    }

    /// The table of base name `base`.
    pub fn table(&self, base: &str) -> Option<&'static Table> {
        self.tables.iter().copied().find(|t| t.base == base)
    }
}

/// Every projection, in the order the projector registers them.
pub const ALL: &[&ProjectionSchema] = &[&orders::PROJECTION, &order_history::PROJECTION];

/// The projection called `name`.
pub fn by_name(name: &str) -> Option<&'static ProjectionSchema> {
    ALL.iter().copied().find(|p| p.name == name)
}

/// Every read-model table of every projection.
pub fn tables() -> Vec<&'static Table> {
    ALL.iter().flat_map(|p| p.tables.iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projection_lists_its_tables_once_under_their_base_names() {
        let names: Vec<_> = ALL.iter().map(|p| p.name).collect();
        assert_eq!(names, ["orders", "order_history"]);
        for projection in ALL {
            let bases: Vec<_> = projection.tables.iter().map(|t| t.base).collect();
            assert_eq!(bases, projection.bases, "{}", projection.name);
            assert!(projection.tables.iter().all(|t| t.generational));
        }
        let mut all: Vec<_> = tables().iter().map(|t| t.base).collect();
        all.sort();
        all.dedup();
        assert_eq!(
            all.len(),
            tables().len(),
            "a table belongs to one projection"
        );
        assert_eq!(by_name("orders"), Some(&orders::PROJECTION));
        assert_eq!(by_name("nope"), None);
    }

    #[test]
    fn the_ddl_of_a_generation_names_each_table_of_that_generation() {
        for projection in ALL {
            let ddl = projection.ddl(7).join("\n");
            for base in projection.bases {
                assert!(ddl.contains(&format!("{base}_g7 (")), "{base} in {ddl}");
            }
        }
        assert_eq!(
            orders::order_detail::TABLE.ddl(3),
            "CREATE TABLE IF NOT EXISTS order_detail_g3 (tenant_id text, order_id uuid, \
             customer_id uuid, currency text, status text, items text, total_cents bigint, \
             version bigint, placed_at timestamp, updated_at timestamp, paid_at timestamp, \
             paid_cents bigint, PRIMARY KEY ((tenant_id, order_id)))"
        );
    }

    #[test]
    fn every_key_column_is_a_column() {
        for table in tables().into_iter().chain(registry::TABLES.iter().copied()) {
            for key in table
                .partition_key
                .iter()
                .chain(table.clustering.iter().map(|(c, _)| c))
            {
                assert!(table.has_column(key), "{}.{key}", table.base);
            }
        }
    }
}
