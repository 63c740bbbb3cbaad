//! Printing: server-side Tables as aligned columns like kubectl, and objects as YAML or JSON.

/// `println!` that survives a closed pipe.
macro_rules! outln {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

/// `print!` that survives a closed pipe.
macro_rules! outtext {
    ($($arg:tt)*) => {
        $crate::output::write_text(format_args!($($arg)*))
    };
}

use serde_json::Value;

/// Prints rows of cells as columns separated by three spaces, as kubectl does.
pub fn print_columns(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        outln!("{}", line.trim_end());
    }
}

/// Which columns of a Table to show: priority 0, or all with `-o wide`.
pub fn visible_columns(table: &Value, wide: bool) -> Vec<(usize, String)> {
    table
        .get("columnDefinitions")
        .and_then(Value::as_array)
        .map(|cols| {
            cols.iter()
                .enumerate()
                .filter(|(_, c)| {
                    wide || c.get("priority").and_then(Value::as_i64).unwrap_or(0) == 0
                })
                .map(|(i, c)| {
                    (
                        i,
                        c.get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_uppercase(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The cells of each row of a Table, for the visible columns; `with_namespace` prepends
/// the row object's namespace, `prefix` goes before the name column.
pub fn table_rows(
    table: &Value,
    columns: &[(usize, String)],
    with_namespace: bool,
    prefix: &str,
) -> Vec<Vec<String>> {
    table
        .get("rows")
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    let cells = row
                        .get("cells")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let mut out = Vec::new();
                    if with_namespace {
                        out.push(
                            row.pointer("/object/metadata/namespace")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                        );
                    }
                    for (n, (i, name)) in columns.iter().enumerate() {
                        let mut text = cell_text(cells.get(*i));
                        if n == 0 && name == "NAME" {
                            text = format!("{prefix}{text}");
                        }
                        out.push(text);
                    }
                    out
                })
                .collect()
        })
        .unwrap_or_default()
}

fn cell_text(cell: Option<&Value>) -> String {
    match cell {
        None | Some(Value::Null) => "<none>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

pub fn print_yaml(value: &Value) -> anyhow::Result<()> {
    outtext!("{}", serde_yaml::to_string(value)?);
    Ok(())
}

pub fn print_json(value: &Value) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Writes a line to standard output. A closed pipe (`skiff get pods | head -1`) ends the
/// process quietly with success instead of a panic, as other Unix tools behave.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    write_text(format_args!("{args}\n"));
}

/// Writes text to standard output; see [`write_line`].
pub fn write_text(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}
