//! Man pages and shell completions generated from a program's clap definition, so they
//! never disagree with `--help`. The packages install what [`generate`] writes.

use std::path::{Path, PathBuf};

/// Writes `man/<name>.1`, one `man/<name>-<subcommand>.1` per visible subcommand, and
/// `completions/<name>.bash`, `completions/_<name>` (zsh) and
/// `completions/<name>.fish` under `out`. Returns the files written.
///
/// # Errors
/// A file could not be written.
pub fn generate(mut cmd: clap::Command, out: &Path) -> std::io::Result<Vec<PathBuf>> {
    cmd.build();
    let name = cmd.get_name().to_owned();
    let man = out.join("man");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    let mut written = Vec::new();

    let mut pages = vec![(name.clone(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let page = format!("{name}-{}", sub.get_name());
        let sub = sub
            .clone()
            .name(page.clone())
            .bin_name(format!("{name} {}", sub.get_name()));
        pages.push((page, sub));
    }
    for (page, c) in pages {
        let path = man.join(format!("{page}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        std::fs::write(&path, buf)?;
        written.push(path);
    }

    use clap_complete::Shell;
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let path = comp.join(file);
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut buf);
        std::fs::write(&path, buf)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pages_and_completions() {
        let cmd = clap::Command::new("demo")
            .about("A demo")
            .subcommand(clap::Command::new("run").about("Runs"))
            .subcommand(clap::Command::new("secret").hide(true));
        let dir = std::env::temp_dir().join(format!("heimdall-docs-{}", std::process::id()));
        let files = generate(cmd, &dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["demo.1", "demo-run.1", "demo.bash", "_demo", "demo.fish"]
        );
        let page = std::fs::read_to_string(dir.join("man/demo-run.1")).unwrap();
        assert!(page.contains("Runs"), "{page}");
        assert!(std::fs::read_to_string(dir.join("completions/demo.bash"))
            .unwrap()
            .contains("run"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
