//! The report's Markdown.

use std::fmt::Write;

use super::{Report, Table};

impl Table {
    /// A GitHub-flavoured Markdown table. `|` in a cell is escaped and line breaks become
    /// `<br>`, so that an error message in a cell cannot break the table.
    pub fn to_markdown(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.columns.len()])
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        push_row(&mut out, &self.columns, width);
        out.push('|');
        out.push_str(&"---|".repeat(width));
        out.push('\n');
        for row in &self.rows {
            push_row(&mut out, row, width);
        }
        out
    }
}

fn push_row(out: &mut String, cells: &[String], width: usize) {
    out.push('|');
    for index in 0..width {
        let cell = cells.get(index).map_or("", String::as_str);
        let cell = cell
            .trim()
            .replace('|', "\\|")
            .replace("\r\n", "<br>")
            .replace('\n', "<br>");
        let _ = write!(out, " {cell} |");
    }
    out.push('\n');
}

/// The whole Markdown file; charts are linked as `<file_stem>.png`, next to it.
pub(super) fn render(report: &Report) -> String {
    let mut out = format!("# {}\n\n", report.title);
    push_text(&mut out, &report.preamble);
    for section in &report.sections {
        let _ = write!(out, "## {}\n\n", section.heading);
        push_text(&mut out, &section.text);
        for table in &section.tables {
            out.push_str(&table.to_markdown());
            out.push('\n');
        }
        for chart in &section.charts {
            let _ = write!(out, "![{}]({}.png)\n\n", chart.title(), chart.file_stem());
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn push_text(out: &mut String, text: &str) {
    let text = text.trim();
    if !text.is_empty() {
        out.push_str(text);
        out.push_str("\n\n");
    }
}
