use std::process::ExitCode;

use calbridge::cli::{Cli, Command, PresenceCommand};
use calbridge::config::Config;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        // `check` reports every step itself; its log only with --verbose (or RUST_LOG).
        Command::Check(args) if !args.verbose => "off",
        // The demo and the benchmark print their own progress; keep the log to problems.
        Command::Demo(_)
        | Command::Bench(_)
        | Command::BenchEmulator(_)
        | Command::BenchInstance(_)
        | Command::Check(_)
        | Command::Reload(_)
        | Command::PanelUrl(_) => "warn",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Presence(PresenceCommand::Simulate(args)) => {
            calbridge::simulate::run(&args, &mut std::io::stdout().lock())
        }
        Command::CheckConfig { config: config_path } => Config::load(&config_path)
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                let store = config.store.target().map_err(anyhow::Error::msg)?;
                println!(
                    "configuration is valid: language {}, time zone {} ({}), subjects {}, {}, {}, store {}",
                    config.presence.language.code(),
                    config.presence.timezone,
                    config.presence.timezone.iana(),
                    if config.presence.show_subject { "shown" } else { "hidden" },
                    calbridge::counted(config.sources.len(), "source", "sources"),
                    calbridge::counted(config.directory.len(), "directory entry", "directory entries"),
                    store,
                );
                // Where each secret came from, never its value.
                for (setting, secret) in config.secrets() {
                    println!("secret {setting}: {}", secret.origin());
                }
                if let Some(warning) = config.inline_secrets_warning(&config_path) {
                    println!("warning: {warning}");
                }
                Ok(())
            }),
        Command::Run(args) => block_on(calbridge::commands::run(args)),
        Command::Reload(args) => block_on(calbridge::commands::reload(args)),
        Command::Login(args) => block_on(calbridge::sign_in::login(args)),
        Command::PanelUrl(args) => block_on(calbridge::commands::panel_url(args)),
        Command::Demo(args) => block_on(calbridge::commands::demo(args)),
        Command::Check(args) => block_on(calbridge::check::run(args)),
        Command::Bench(args) => block_on(calbridge::bench::run(args)),
        Command::BenchEmulator(args) => block_on(calbridge::bench::run_emulator(args)),
        Command::BenchInstance(args) => block_on(calbridge::bench::run_instance(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| anyhow::anyhow!("cannot start the async runtime: {error}"))?
        .block_on(future)
}
