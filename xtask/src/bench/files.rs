//! Files of the benchmark's work folder: copies of the project, the 50-service project,
//! sizes.

use std::fmt::Write as _;
use std::os::unix::fs::symlink;

use anyhow::Context as _;
use camino::Utf8Path;

pub(super) fn remove(path: &Utf8Path) -> anyhow::Result<()> {
    match path.symlink_metadata() {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_dir() => {
            std::fs::remove_dir_all(path).with_context(|| format!("removing {path}"))
        }
        Ok(_) => std::fs::remove_file(path).with_context(|| format!("removing {path}")),
    }
}

pub(super) fn dir_size(dir: &Utf8Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in dir.read_dir_utf8()? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        if meta.is_dir() {
            total += dir_size(entry.path())?;
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}

/// A compose project of 50 build services over two Dockerfiles and requirements files.
pub(super) fn write_fifty_services(dir: &Utf8Path) -> anyhow::Result<()> {
    let mut compose = String::from("name: fifty\nservices:\n");
    for i in 0..50 {
        let name = format!("svc{i:02}");
        let ctx = dir.join(&name);
        std::fs::create_dir_all(&ctx)?;
        let base = if i % 2 == 0 {
            "python:3.9-slim"
        } else {
            "node:18-alpine"
        };
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM scratch AS wheels\nFROM {base} AS build\nWORKDIR /app\nCOPY . .\n\
                 RUN echo {name}\nFROM nginx:alpine\nCOPY --from=build /app /srv\n"
            ),
        )?;
        if i % 2 == 0 {
            std::fs::write(
                ctx.join("requirements.txt"),
                "fastapi==0.115.5\nuvicorn==0.32.1\nhttpx==0.28.1\n",
            )?;
        }
        let _ = write!(
            compose,
            "  {name}:\n    build:\n      context: ./{name}\n      args:\n        \
             SERVICE: {name}\n    image: fifty-{name}:latest\n    environment:\n      \
             PORT: \"{}\"\n    depends_on: [{}]\n",
            8000 + i,
            if i == 0 {
                "db".to_string()
            } else {
                format!("svc{:02}", i - 1)
            }
        );
    }
    compose.push_str("  db:\n    image: nginx:alpine\n");
    std::fs::write(dir.join("compose.yaml"), compose)?;
    Ok(())
}

/// Directories never copied with the project: dependencies, build output, tooling.
const SKIP: &[&str] = &[
    ".git",
    "target",
    "xtask",
    "docker-build-cache",
    "node_modules",
    ".venv",
    ".next",
    ".test-build",
    "__pycache__",
    ".pytest_cache",
    "docs",
];

pub(super) fn copy_project(repo: &Utf8Path, dest: &Utf8Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest)?;
    for entry in repo.read_dir_utf8()? {
        let entry = entry?;
        copy_tree(entry.path(), &dest.join(entry.file_name()), SKIP)?;
    }
    Ok(())
}

pub(super) fn copy_tree(src: &Utf8Path, dest: &Utf8Path, skip: &[&str]) -> anyhow::Result<()> {
    if skip.contains(&src.file_name().unwrap_or_default()) {
        return Ok(());
    }
    let meta = src.symlink_metadata()?;
    if meta.is_dir() {
        std::fs::create_dir_all(dest)?;
        for entry in src.read_dir_utf8()? {
            let entry = entry?;
            copy_tree(entry.path(), &dest.join(entry.file_name()), skip)?;
        }
    } else if meta.is_symlink() {
        symlink(std::fs::read_link(src)?, dest)?;
    } else {
        std::fs::copy(src, dest).with_context(|| format!("copying {src}"))?;
    }
    Ok(())
}
