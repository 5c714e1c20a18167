//! Markdown for the reports the stages render (evaluation, profile), escaped so that data
//! (an entity type, a relation `x | y`, a generation holding a code fence) cannot break a table
//! or a code block.

/// `text` as one table cell: `|` escaped, line breaks as `<br>`.
pub fn cell(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace("\r\n", "<br>")
        .replace(['\n', '\r'], "<br>")
}

/// A table row of already escaped cells.
pub fn row<S: AsRef<str>>(cells: &[S]) -> String {
    let cells: Vec<&str> = cells.iter().map(AsRef::as_ref).collect();
    format!("| {} |", cells.join(" | "))
}

/// A table row whose cells are escaped here.
pub fn escaped_row<S: AsRef<str>>(cells: &[S]) -> String {
    let cells: Vec<String> = cells.iter().map(|c| cell(c.as_ref())).collect();
    row(&cells)
}

/// `text` in a fenced code block whose fence is longer than any run of backticks in it.
pub fn code_block(language: &str, text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}{language}\n{text}\n{fence}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_or_a_line_break_stays_inside_its_cell() {
        assert_eq!(cell("aspirin | headache"), "aspirin \\| headache");
        assert_eq!(cell("a\nb\r\nc"), "a<br>b<br>c");
        assert_eq!(cell("a\\|b"), "a\\\\\\|b");
        assert_eq!(escaped_row(&["x|y", "1"]), "| x\\|y | 1 |");
    }

    #[test]
    fn a_fence_in_the_text_does_not_close_the_block() {
        assert_eq!(code_block("text", "plain"), "```text\nplain\n```");
        let block = code_block("text", "a ```` b");
        assert!(
            block.starts_with("`````text\n") && block.ends_with("\n`````"),
            "{block}"
        );
    }
}
