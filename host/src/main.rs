//! The `toolhost` binary: parse the command line, start logging, run the subcommand, and turn
//! its error chain into a message and an exit status.

use std::process::ExitCode;

use clap::Parser;
use toolhost::cli::{Cli, Command, LogFormat};
use toolhost::commands;
use toolhost::config::{Flags, Settings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let flags = match &cli.command {
        Command::Serve(args) => {
            Flags { limits: args.limits.clone(), app: args.app.clone(), server: args.server.clone() }
        }
        Command::Stdio(args) => Flags { limits: args.limits.clone(), app: args.app.clone(), ..Flags::default() },
        Command::Run(args) => Flags { limits: args.limits.clone(), ..Flags::default() },
        Command::Bench(args) => Flags { limits: args.limits.clone(), ..Flags::default() },
        Command::Runtime(_) | Command::Prepare => Flags::default(),
        Command::Tools(args) => Flags { app: args.app.clone(), ..Flags::default() },
        Command::Worker => {
            // A worker reads no configuration: its server sends what it needs. It logs as the
            // environment says (it inherits the server's) to the server's stderr.
            init_logging(
                cli.global.log_format.unwrap_or(LogFormat::Text),
                cli.global.log.as_deref().unwrap_or(toolhost::config::DEFAULT_LOG_FILTER),
            );
            return commands::worker::run();
        }
        Command::Config => {
            print!("{}", toolhost::config::reference());
            return Ok(ExitCode::SUCCESS);
        }
    };
    let settings = Settings::load(&cli.global, &flags)?;
    init_logging(settings.log_format, &settings.log_filter);
    match cli.command {
        Command::Serve(_) => commands::serve::run(settings),
        Command::Stdio(args) => commands::stdio::run(settings, args.workspace),
        Command::Run(args) => commands::run::run(settings, args),
        Command::Runtime(command) => commands::runtimes::run(settings, command),
        Command::Bench(args) => match args.soak {
            Some(seconds) => {
                commands::soak::run(settings, std::time::Duration::from_secs_f64(seconds.max(1.0)), args.json)
            }
            None => commands::bench::run(settings, args),
        },
        Command::Prepare => commands::prepare::child(settings),
        Command::Tools(_) => commands::tools::check(&settings),
        Command::Config | Command::Worker => unreachable!("answered before the settings are read"),
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(toolhost::config::DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
