//! What `rdmq-admin` prints: rows of named columns, as an aligned table or as JSON.

use serde_json::{Map, Value};

/// A result: column names and rows of cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Value>>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(columns: &[&'static str]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per column).
    pub fn row(&mut self, cells: Vec<Value>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True without rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows as a JSON array of objects.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    let mut m = Map::new();
                    for (c, v) in self.columns.iter().zip(r) {
                        m.insert((*c).to_owned(), v.clone());
                    }
                    Value::Object(m)
                })
                .collect(),
        )
    }

    /// The rows as an aligned text table with a header line.
    pub fn to_text(&self) -> String {
        let cell = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(cell).collect())
            .collect();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cells
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let line = |out: &mut String, r: &[String]| {
            let mut l = String::new();
            for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
                if i > 0 {
                    l.push_str("  ");
                }
                l.push_str(c);
                if i + 1 < r.len() {
                    l.extend(std::iter::repeat_n(' ', w - c.chars().count()));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        let header: Vec<String> = self.columns.iter().map(|c| c.to_uppercase()).collect();
        line(&mut out, &header);
        for r in &cells {
            line(&mut out, r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_json_names_the_columns() {
        let mut t = Table::new(&["broker", "queue", "lag"]);
        t.row(vec![json!("broker-a"), json!(0), json!(12)]);
        t.row(vec![json!("b"), json!(10), Value::Null]);
        assert_eq!(
            t.to_text(),
            "BROKER    QUEUE  LAG\nbroker-a  0      12\nb         10     -\n"
        );
        assert_eq!(
            t.to_json(),
            json!([{"broker":"broker-a","queue":0,"lag":12},{"broker":"b","queue":10,"lag":null}])
        );
    }
}
