//! The `sluice` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_core::{ConfigError, Gateway};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "A fast, trustworthy API gateway that reads KrakenD v3 configuration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validates a configuration file: prints "Syntax OK!" or every error with its JSON path.
    Check {
        /// Path to the KrakenD v3 configuration file.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Also reports unknown keys and unsupported namespaces as warnings.
        #[arg(long)]
        lint: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config, lint } => check(&config, lint),
    }
}

fn check(path: &std::path::Path, lint: bool) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match Gateway::load(&text) {
        Ok(loaded) => {
            if lint {
                for w in &loaded.warnings {
                    eprintln!("warning: {w}");
                }
            }
            println!("Syntax OK!");
            ExitCode::SUCCESS
        }
        Err(ConfigError::Syntax { line, column, message }) => {
            eprintln!("{}:{line}:{column}: invalid JSON: {message}", path.display());
            ExitCode::FAILURE
        }
        Err(ConfigError::Invalid(errors)) => {
            for e in &errors {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}
