//! The README's promises that can drift from the code: its tool table names every tool of
//! the catalogue.

#[test]
fn the_readme_tool_table_names_every_tool_of_the_catalogue() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| tool | runs in |"))
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(table.len() > 2, "the README has no tool table");
    for b in herd::event::tools::BUILTINS {
        let named = format!("`{}`", b.name);
        assert!(
            table
                .iter()
                .any(|row| row.split('|').nth(1).is_some_and(|c| c.contains(&named))),
            "the README's tool table does not name {}",
            b.name
        );
    }
}
