use std::process::ExitCode;

use calbridge::cli::{Cli, Command, PresenceCommand};
use calbridge::config::Config;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Presence(PresenceCommand::Simulate(args)) => {
            calbridge::simulate::run(&args, &mut std::io::stdout().lock())
        }
        Command::CheckConfig { config } => Config::load(&config)
            .map(|config| {
                println!(
                    "configuration is valid: language {}, time zone {} ({}), subjects {}",
                    config.presence.language.code(),
                    config.presence.timezone,
                    config.presence.timezone.iana(),
                    if config.presence.show_subject {
                        "shown"
                    } else {
                        "hidden"
                    }
                );
            })
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
