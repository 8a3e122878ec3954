//! `cargo xtask gen-kpi [--check] [--from DIR] [--history --xnu-git DIR]`: regenerates kextld's committed
//! KPI symbol table from xnu's `config/*.exports` files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where the xnu export lists are looked for when `--from` is not given.
pub fn default_exports_dir(root: &Path) -> PathBuf {
    std::env::var_os("PRX_XNU_EXPORTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/xnu-exports"))
}

/// Writes (or with `check`, compares) the multi-release table from an xnu clone.
pub fn run_history(root: &Path, xnu_git: &Path, check: bool) -> Result<()> {
    let table = root.join(kextld::kpi::HISTORY_PATH);
    eprintln!(
        "reading config/*.exports at {} xnu tags from {}",
        kextld::kpi::history::RELEASES.len(),
        xnu_git.display()
    );
    let text = kextld::kpi::generate_history(xnu_git)
        .with_context(|| format!("generating from {}", xnu_git.display()))?;
    let old = std::fs::read_to_string(&table).unwrap_or_default();
    if check {
        if old != text {
            bail!(
                "{} is out of date with {}: run `cargo xtask gen-kpi --history --xnu-git {}` \
                 and commit the result",
                table.display(),
                xnu_git.display(),
                xnu_git.display()
            );
        }
        eprintln!("{} is up to date", table.display());
    } else if old == text {
        eprintln!("{} unchanged", table.display());
    } else {
        let tmp = table.with_extension("txt.tmp");
        std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &table).with_context(|| format!("replacing {}", table.display()))?;
        eprintln!("wrote {} ({} bytes)", table.display(), text.len());
    }
    Ok(())
}

/// Writes (or with `check`, compares) the table.
pub fn run(root: &Path, from: Option<PathBuf>, check: bool) -> Result<()> {
    let dir = from.unwrap_or_else(|| default_exports_dir(root));
    if !dir.is_dir() {
        bail!(
            "{}: no such directory; pass --from with the path of xnu's config/*.exports files \
             (or set PRX_XNU_EXPORTS)",
            dir.display()
        );
    }
    let table = root.join(kextld::kpi::TABLE_PATH);
    if check {
        let committed = std::fs::read_to_string(&table)
            .with_context(|| format!("reading {}", table.display()))?;
        kextld::kpi::check(&dir, &committed).map_err(|e| {
            anyhow::anyhow!(
                "{} is out of date: {e}\nrun `cargo xtask gen-kpi` and commit the result",
                table.display()
            )
        })?;
        eprintln!("{} is up to date with {}", table.display(), dir.display());
        return Ok(());
    }
    let text = kextld::kpi::generate(&dir)
        .with_context(|| format!("generating from {}", dir.display()))?;
    let old = std::fs::read_to_string(&table).unwrap_or_default();
    if old == text {
        eprintln!("{} unchanged", table.display());
    } else {
        let tmp = table.with_extension("txt.tmp");
        std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &table).with_context(|| format!("replacing {}", table.display()))?;
        eprintln!("wrote {} ({} bytes)", table.display(), text.len());
    }
    Ok(())
}
