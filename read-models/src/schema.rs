//! Tables as data: columns, keys and DDL, generation naming, the pieces statements are built from,
//! and [`check_statement`], which finds a statement naming a column its table does not have.

/// One column: its name and CQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub cql_type: &'static str,
}

impl Column {
    pub const fn new(name: &'static str, cql_type: &'static str) -> Self {
        Self { name, cql_type }
    }
}

/// Order of a clustering column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::Asc => "ASC",
            Order::Desc => "DESC",
        }
    }
}

/// A table: a read-model table exists once per generation (`<base>_g<n>`, see [`table`]); a
/// registry table exists once (created by the migrations in `infra/migrations/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    pub base: &'static str,
    pub columns: &'static [Column],
    pub partition_key: &'static [&'static str],
    pub clustering: &'static [(&'static str, Order)],
    /// One table per generation of its projection.
    pub generational: bool,
}

impl Table {
    /// The table's name in generation `generation` (registry tables have one name only).
    pub fn name(&self, generation: i32) -> String {
        if self.generational {
            table(self.base, generation)
        } else {
            self.base.to_string()
        }
    }

    /// [`Table::name`] qualified by `keyspace`.
    pub fn qualified(&self, keyspace: &str, generation: i32) -> String {
        format!("{keyspace}.{}", self.name(generation))
    }

    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.name == name)
    }

    pub fn column_names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|c| c.name).collect()
    }

    /// `CREATE TABLE IF NOT EXISTS` of generation `generation` (unqualified: run it in a session
    /// whose keyspace is the service keyspace).
    pub fn ddl(&self, generation: i32) -> String {
        let columns = self
            .columns
            .iter()
            .map(|c| format!("{} {}", c.name, c.cql_type))
            .collect::<Vec<_>>()
            .join(", ");
        let partition = format!("({})", self.partition_key.join(", "));
        let key = std::iter::once(partition)
            .chain(self.clustering.iter().map(|(c, _)| c.to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut ddl = format!(
            "CREATE TABLE IF NOT EXISTS {} ({columns}, PRIMARY KEY ({key}))",
            self.name(generation)
        );
        if self
            .clustering
            .iter()
            .any(|(_, order)| *order == Order::Desc)
        {
            let order = self
                .clustering
                .iter()
                .map(|(c, o)| format!("{c} {}", o.as_str()))
                .collect::<Vec<_>>()
                .join(", ");
            ddl.push_str(&format!(" WITH CLUSTERING ORDER BY ({order})"));
        }
        ddl
    }
}

/// The name of generation `generation` of table `base`.
pub fn table(base: &str, generation: i32) -> String {
    format!("{base}_g{generation}")
}

/// The same, qualified by its keyspace: prepared statements name their keyspace (Cassandra warns
/// on every prepare of an unqualified name once the session has a `USE`d keyspace).
pub fn qualified(keyspace: &str, base: &str, generation: i32) -> String {
    format!("{keyspace}.{}", table(base, generation))
}

/// `a, b, c`: a column list.
pub fn list(columns: &[&str]) -> String {
    columns.join(", ")
}

/// `?, ?, ?`: one bind marker per column.
pub fn binds(columns: &[&str]) -> String {
    vec!["?"; columns.len()].join(", ")
}

/// `a = ? AND b = ?`: a key lookup.
pub fn equal(columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| format!("{c} = ?"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Words of CQL a statement may hold besides columns, tables and keyspaces (lower case).
const KEYWORDS: &[&str] = &[
    "select",
    "from",
    "where",
    "and",
    "insert",
    "into",
    "values",
    "using",
    "timestamp",
    "ttl",
    "update",
    "set",
    "delete",
    "if",
    "not",
    "exists",
    "limit",
    "order",
    "by",
    "asc",
    "desc",
    "null",
    "in",
    "allow",
    "filtering",
    "distinct",
    "as",
    "true",
    "false",
    "per",
    "partition",
];

/// Check that every column `statement` names belongs to the table it reads or writes, one of
/// `tables` (any generation, qualified or not). Function names (`COUNT(*)`, `SUM(x)`) and CQL
/// words are not columns; string literals are skipped. `Err` says what is wrong.
pub fn check_statement(statement: &str, tables: &[&Table]) -> Result<(), String> {
    let tokens = tokenize(statement);
    let mut target: Option<&Table> = None;
    let mut names = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        let lower = token.to_ascii_lowercase();
        let next = tokens.get(i + 1).map(String::as_str);
        if matches!(lower.as_str(), "from" | "into" | "update") {
            // The table follows, perhaps as `keyspace . table`.
            let (name, skip) = match (tokens.get(i + 1), tokens.get(i + 2), tokens.get(i + 3)) {
                (Some(_), Some(dot), Some(name)) if dot == "." => (name.clone(), 4),
                (Some(name), _, _) => (name.clone(), 2),
                _ => return Err(format!("no table after {token} in {statement}")),
            };
            let found = tables
                .iter()
                .find(|t| {
                    name == t.base
                        || (t.generational
                            && name
                                .strip_prefix(t.base)
                                .and_then(|rest| rest.strip_prefix("_g"))
                                .is_some_and(|g| g.parse::<i32>().is_ok()))
                })
                .ok_or_else(|| format!("unknown table {name} in {statement}"))?;
            if target.is_some_and(|t| t.base != found.base) {
                return Err(format!("two tables in {statement}"));
            }
            target = Some(found);
            i += skip;
            continue;
        }
        let is_word = token
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if is_word && next != Some("(") && !KEYWORDS.contains(&lower.as_str()) {
            names.push(token.clone());
        }
        i += 1;
    }
    let target = target.ok_or_else(|| format!("no table in {statement}"))?;
    let unknown: Vec<_> = names
        .iter()
        .filter(|name| !target.has_column(name))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} has no column {unknown:?}: {statement}",
            target.base
        ))
    }
}

/// Words, numbers and single punctuation characters; string literals dropped.
fn tokenize(statement: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = statement.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        if c == '\'' {
            // A literal: up to the closing quote ('' is an escaped quote inside).
            while let Some(c) = chars.next() {
                if c == '\'' {
                    if chars.peek() == Some(&'\'') {
                        chars.next();
                    } else {
                        break;
                    }
                }
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            let mut word = c.to_string();
            while let Some(&n) = chars.peek() {
                if n.is_ascii_alphanumeric() || n == '_' {
                    word.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(word);
            continue;
        }
        tokens.push(c.to_string());
    }
    tokens
}

/// The `(name, type)` of every column a `CREATE TABLE` statement declares, in order (for tests
/// comparing the DDL of the migrations with the descriptions here).
pub fn declared_columns(ddl: &str) -> Vec<(String, String)> {
    let Some(open) = ddl.find('(') else {
        return Vec::new();
    };
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in ddl[open + 1..].chars() {
        match c {
            '(' | '<' => {
                depth += 1;
                current.push(c);
            }
            ')' | '>' if depth > 0 => {
                depth -= 1;
                current.push(c);
            }
            ')' => break,
            ',' if depth == 0 => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    parts.push(current);
    parts
        .iter()
        .map(|p| p.split_whitespace().collect::<Vec<_>>())
        .filter(|words| {
            words
                .first()
                .is_some_and(|w| !w.eq_ignore_ascii_case("primary"))
        })
        .filter_map(|words| {
            let (name, rest) = words.split_first()?;
            let cql_type = rest
                .iter()
                .take_while(|w| !w.eq_ignore_ascii_case("primary"))
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            Some((name.to_string(), cql_type))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Table = Table {
        base: "things",
        columns: &[
            Column::new("tenant_id", "text"),
            Column::new("id", "uuid"),
            Column::new("at", "timestamp"),
            Column::new("amount", "bigint"),
        ],
        partition_key: &["tenant_id", "id"],
        clustering: &[("at", Order::Desc)],
        generational: true,
    };

    #[test]
    fn generation_names_carry_the_suffix_and_the_keyspace() {
        assert_eq!(table("things", 3), "things_g3");
        assert_eq!(qualified("ks", "things", 3), "ks.things_g3");
        assert_eq!(T.qualified("ks", 2), "ks.things_g2");
    }

    #[test]
    fn the_ddl_lists_every_column_the_key_and_the_clustering_order() {
        assert_eq!(
            T.ddl(4),
            "CREATE TABLE IF NOT EXISTS things_g4 (tenant_id text, id uuid, at timestamp, \
             amount bigint, PRIMARY KEY ((tenant_id, id), at)) WITH CLUSTERING ORDER BY (at DESC)"
        );
        let declared = declared_columns(&T.ddl(4));
        let expected: Vec<_> = T
            .columns
            .iter()
            .map(|c| (c.name.to_string(), c.cql_type.to_string()))
            .collect();
        assert_eq!(declared, expected);
    }

    #[test]
    fn statements_naming_only_their_table_s_columns_pass() {
        for ok in [
            "SELECT amount, at FROM ks.things_g7 WHERE tenant_id = ? AND id = ?",
            "SELECT COUNT(*), SUM(amount) FROM things_g1 WHERE tenant_id = ? AND id = ? LIMIT ?",
            "INSERT INTO ks.things_g2 (tenant_id, id, at, amount) VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
            "DELETE FROM ks.things_g2 USING TIMESTAMP ? WHERE tenant_id = ? AND id = ?",
            "UPDATE things_g2 SET amount = ? WHERE tenant_id = 'x' AND id = ? IF amount = null",
        ] {
            assert_eq!(check_statement(ok, &[&T]), Ok(()), "{ok}");
        }
    }

    #[test]
    fn a_column_the_table_does_not_have_is_found() {
        let err = check_statement(
            "SELECT amount, price FROM ks.things_g7 WHERE tenant_id = ? AND id = ?",
            &[&T],
        )
        .unwrap_err();
        assert!(err.contains("price"), "{err}");
        assert!(check_statement("SELECT amount FROM ks.other_g1", &[&T]).is_err());
        assert!(check_statement("SELECT amount", &[&T]).is_err());
    }
}
