//! Finding and loading the compose project.
use camino::Utf8PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct ProjectArgs {
    /// Compose file (default: compose.yaml, compose.yml, docker-compose.yaml or
    /// docker-compose.yml in the current directory or the nearest parent that has one)
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    pub file: Option<Utf8PathBuf>,
    /// Project name (default: the compose file's `name:`, else its folder's name)
    #[arg(short = 'p', long = "project-name", global = true, value_name = "NAME")]
    pub project_name: Option<String>,
}
