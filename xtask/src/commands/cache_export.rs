//! `cargo xtask cache-export`: writes the bundle an offline rebuild needs.
//!
//! Reads the flags, plans, probes the engine and picks the strategy, takes the bundle's
//! lock, and hands the steps to `crate::export`; then signs and says the digest.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use camino::Utf8PathBuf;
use xshell::Shell;

use crate::bundle::{self, human_bytes, BundleLock};
use crate::bundle_arg::{bundle_dir, check_usable_by_builds};
use crate::docker::{choose_strategy, Docker};
use crate::export::{Export, Options, Part, PullPolicy};
use crate::model::manifest::{Compression, Strategy, IMPORT_SCRIPT};
use crate::model::plan::Plan;
use crate::project::{ProjectArgs, RealFs};
use crate::tool::ToolChoice;

/// Export base images, build cache and dependency caches for an offline rebuild
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  cargo xtask cache-export\n  \
    cargo xtask cache-export --only base-images,build-cache --compression zstd\n  \
    cargo xtask cache-export --strategy inline --output /mnt/usb/docker-build-cache\n  \
    cargo xtask cache-export --tool-binary target/x86_64-unknown-linux-gnu/release/xtask\n  \
    cargo xtask cache-export --no-tool\n  \
    cargo xtask cache-export --rehearse   # as root: then rebuild from it with no network\n  \
    cargo xtask cache-export --since /srv/bundles/2026-11 --output /mnt/usb/delta   # only what 2026-11 lacks\n  \
    cargo xtask cache-export --since old.pack-index --output delta --json")]
pub struct Args {
    /// Bundle folder to write (default: docker-build-cache/ beside the compose file)
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<Utf8PathBuf>,
    /// Build-cache strategy (default: the strongest the engine supports)
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// Compression of the images archive (default: none on the containerd image store,
    /// whose layers are already compressed: the images are then kept as base-images/ with
    /// their layers in build-cache/blobs/, shared with the build cache; zstd otherwise)
    #[arg(long, value_enum)]
    pub compression: Option<Compression>,
    /// Export only these parts
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PARTS")]
    pub only: Vec<Part>,
    /// Pull missing base images (`missing`), or fail on them (`never`)
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,
    /// Python version of the wheelhouse (default: asked of the image, else its name says)
    #[arg(long, value_name = "X.Y")]
    pub python_version: Option<String>,
    /// pip platform tag of the wheelhouse, repeatable (e.g. manylinux2014_x86_64)
    #[arg(long = "platform", value_name = "TAG")]
    pub platforms: Vec<String>,
    /// Fill the npm cache with the tarballs of every platform in the lockfile, not only
    /// this engine's os/cpu (for a server of another CPU; several times the size for Next.js)
    #[arg(long)]
    pub all_npm_platforms: bool,
    /// Also pack each node build service's node_modules/ (node_modules.tar.gz); made for
    /// this host's platform, for use on hosts like it
    #[arg(long)]
    pub with_node_modules: bool,
    /// Take the images through `docker save` even where the engine's containerd content
    /// store can be read directly (the faster path, used by default when the engine is
    /// local and uses the containerd image store)
    #[arg(long)]
    pub docker_save: bool,
    /// Also write the bundle's digest (what `cache-import --expect-digest` checks) to FILE
    #[arg(long, value_name = "FILE")]
    pub digest_file: Option<Utf8PathBuf>,
    /// Sign the bundle with this ssh private key (`ssh-keygen -Y sign`, namespace
    /// xtask-bundle): SHA256SUMS.sig, checked by cache-import --allowed-signers
    #[arg(long, value_name = "KEY")]
    pub sign_key: Option<Utf8PathBuf>,
    /// Do not carry the tool (bin/xtask, a static build, and tool/xtask-vendor.tar.gz, its
    /// crates): the server then needs `cargo xtask` with its crates, or only the sh script.
    /// Wins over --tool-binary and XTASK_TOOL_BINARY
    #[arg(long)]
    pub no_tool: bool,
    /// Carry this static xtask binary as bin/xtask instead of building one (a build made
    /// with RUSTFLAGS='-C target-feature=+crt-static' for this machine's target)
    #[arg(long, value_name = "FILE", env = "XTASK_TOOL_BINARY")]
    pub tool_binary: Option<Utf8PathBuf>,
    /// Then rehearse the offline rebuild from the new bundle on a throwaway engine with no
    /// network, as `cache-rehearse` does (needs root); exit 1 when it fails
    #[arg(long)]
    pub rehearse: bool,
    /// Write a delta of the earlier bundle OLD (its folder, its pack: NAME.tar or
    /// NAME.pack-index, or its manifest.yaml): only the files OLD lacks, naming OLD by its
    /// digest. cache-import completes it with OLD (beside it, or --base OLD)
    #[arg(long, value_name = "OLD")]
    pub since: Option<Utf8PathBuf>,
    /// Print what was written (folder, digest, files, bytes; for a delta, its base's
    /// digest and what it carries) as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// What `--json` prints.
#[derive(serde::Serialize)]
struct Summary {
    bundle: String,
    /// `sha256:<hex>` of SHA256SUMS.
    digest: String,
    /// The files the bundle holds (a delta: those it carries), and their bytes.
    files: usize,
    bytes: u64,
    /// A delta: its base, the full bundle it completes to, and what it carries.
    delta: Option<crate::delta::DeltaSummary>,
    seconds: f64,
}

impl Args {
    pub fn run(self, sh: &Shell, project_args: &ProjectArgs) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        if self.rehearse {
            if self.since.is_some() {
                anyhow::bail!(
                    "--rehearse builds from a whole bundle, and --since writes a delta: rehearse \
                     the full bundle (`cargo xtask cache-rehearse --bundle DIR`), or the delta \
                     once `cache-import` has completed it"
                );
            }
            // Said before the export, not after it.
            crate::rehearse::check_root()?;
        }
        let project = project_args.load(sh)?;
        let plan = Plan::build(&project.model, &project.name, &RealFs)?;
        for warning in &plan.warnings {
            eprintln!("warning: {warning}");
        }
        // Secret-looking build args (secrets.rs): baked into image history, so warn.
        let build_args = plan
            .build_services
            .iter()
            .map(|s| (s.name.as_str(), &s.args));
        for warning in crate::secrets::build_arg_warnings(build_args) {
            eprintln!("warning: {warning}");
        }
        let docker = Docker::new(sh);
        let engine = docker.probe()?;
        let strategy = choose_strategy(&engine, self.strategy)?;
        let compression = self.compression.unwrap_or(if engine.containerd_store {
            Compression::None
        } else {
            Compression::Zstd
        });
        let out = bundle_dir(sh, self.output.as_deref(), project_args)?;
        check_usable_by_builds(&out)?;
        let since = self.since(sh, &out)?;
        eprintln!(
            "   Exporting {} ({} build services, {} base images) to {out}",
            project.name,
            plan.build_services.len(),
            plan.base_images.len()
        );
        eprintln!(
            "      Engine {} ({} image store), strategy {}, compression {}",
            engine.server_version,
            if engine.containerd_store {
                "containerd"
            } else {
                "classic"
            },
            strategy.as_str(),
            compression.as_str()
        );

        let _lock = BundleLock::acquire(&out, "cache-export", true)?;
        let staging = out.join(".export-partial");
        if staging.exists() {
            // Only an interrupted export leaves it, and we hold the lock.
            std::fs::remove_dir_all(&staging).with_context(|| {
                format!("removing the leftovers of an interrupted export in {staging}")
            })?;
        }
        std::fs::create_dir_all(&staging).with_context(|| format!("creating {staging}"))?;
        let options = self.options(&crate::project::current_dir(sh)?);
        let mut export = Export {
            args: &options,
            engine,
            project,
            plan,
            strategy,
            compression,
            out,
            staging,
            previous: None,
            since,
        };
        let (manifest, digest) = export.write(sh)?;
        let out = export.out.clone();
        self.finish(sh, project_args, started, _lock, &out, &manifest, &digest)
    }

    /// After the export: what was written, the signature and digest file, the rehearsal,
    /// and what to do next.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        sh: &Shell,
        project_args: &ProjectArgs,
        started: Instant,
        lock: BundleLock,
        out: &Utf8PathBuf,
        manifest: &crate::model::manifest::Manifest,
        digest: &str,
    ) -> anyhow::Result<ExitCode> {
        let total = manifest.carried_size();
        eprintln!(
            "    Finished export of {} files ({}) in {:.1}s: {out}",
            manifest.carried().count(),
            human_bytes(total),
            started.elapsed().as_secs_f64()
        );
        for (part, files, bytes) in parts(manifest) {
            eprintln!(
                "        Part {part} ({files} files, {})",
                human_bytes(bytes)
            );
        }
        if let Some(key) = &self.sign_key {
            let key = crate::project::absolute(&crate::project::current_dir(sh)?, key);
            bundle::sign_sums(out, &key)?;
            eprintln!("      Signed {out}/{} with {key}", bundle::SIGNATURE_FILE);
        }
        if let Some(file) = &self.digest_file {
            let file = crate::project::absolute(&crate::project::current_dir(sh)?, file);
            bundle::write_atomic(&file, format!("sha256:{digest}\n").as_bytes())?;
        }
        eprintln!("      Digest sha256:{digest} (SHA256SUMS, which lists every file; carry it apart from the bundle)");
        drop(lock);
        if let Some(base) = &manifest.base {
            eprintln!(
                "        Note {out} is a delta of {}: import it where that bundle is (beside it, \
                 or `cache-import --bundle {out} --base OLD`)",
                base.digest
            );
        }
        if self.json {
            let summary = Summary {
                bundle: out.to_string(),
                digest: format!("sha256:{digest}"),
                files: manifest.carried().count(),
                bytes: manifest.carried_size(),
                delta: crate::delta::DeltaSummary::of(manifest),
                seconds: started.elapsed().as_secs_f64(),
            };
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        if self.rehearse {
            let options = crate::rehearse::Options {
                bundle_dir: out.clone(),
                trust: bundle::Trust {
                    digest: Some(digest.to_string()),
                    signers: None,
                },
                up: false,
                strict: false,
            };
            let report = crate::rehearse::run(sh, project_args, &options)?;
            crate::rehearse::print_verdict(&report);
            if !report.ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        eprintln!("        Next: copy {out} to the offline server, then run `cargo xtask cache-import --expect-digest sha256:{digest}` (or `sh {IMPORT_SCRIPT}`) there");
        Ok(ExitCode::SUCCESS)
    }

    /// `--since OLD`, read (OLD is never written to: the delta goes to another folder).
    fn since(&self, sh: &Shell, out: &Utf8PathBuf) -> anyhow::Result<Option<crate::delta::Since>> {
        let Some(old) = &self.since else {
            return Ok(None);
        };
        let old = crate::project::absolute(&crate::project::current_dir(sh)?, old);
        let same = |a: &Utf8PathBuf, b: &Utf8PathBuf| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        let old_dir = if old.file_name() == Some(crate::model::manifest::MANIFEST_FILE) {
            old.parent()
                .map(|p| p.to_owned())
                .unwrap_or_else(|| old.clone())
        } else {
            old.clone()
        };
        if same(&old_dir, out) {
            anyhow::bail!(
                "--since {old} is the output folder {out}: the delta goes to another folder, \
                 and the base bundle is never modified; give --output DIR"
            );
        }
        let since = crate::delta::read_since(&old)?;
        eprintln!("       Since {old} ({})", since.digest);
        Ok(Some(since))
    }

    /// What the export's steps read of the flags.
    fn options(&self, cwd: &camino::Utf8Path) -> Options {
        Options {
            only: self.only.clone(),
            pull: self.pull,
            python_version: self.python_version.clone(),
            platforms: self.platforms.clone(),
            all_npm_platforms: self.all_npm_platforms,
            with_node_modules: self.with_node_modules,
            docker_save: self.docker_save,
            tool: match (&self.tool_binary, self.no_tool) {
                (_, true) => ToolChoice::None,
                (Some(file), false) => ToolChoice::Prebuilt(crate::project::absolute(cwd, file)),
                (None, false) => ToolChoice::Build,
            },
        }
    }
}

/// The bundle's parts as the operator sees them: each top-level folder (`build-cache/`,
/// `pip-cache/`, …) and each top-level file, with its file count and size.
fn parts(manifest: &crate::model::manifest::Manifest) -> Vec<(String, usize, u64)> {
    let mut parts: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for file in manifest.carried() {
        let part = match file.path.split_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => file.path.clone(),
        };
        let entry = parts.entry(part).or_default();
        entry.0 += 1;
        entry.1 = entry.1.saturating_add(file.size);
    }
    parts
        .into_iter()
        .map(|(part, (files, bytes))| (part, files, bytes))
        .collect()
}
