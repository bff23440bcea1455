//! The `docker-idpb` binary: parse the command line, run it, print the one-line error if it fails.

fn main() {
    let argv: Vec<String> = match std::env::args_os().map(|a| a.into_string()).collect::<Result<_, _>>() {
        Ok(argv) => argv,
        Err(bad) => {
            eprintln!("docker-idpb: argument {bad:?} is not valid UTF-8 (rename the path or pass it another way)");
            std::process::exit(2);
        }
    };
    let program = argv.first().and_then(|p| std::path::Path::new(p).file_name()).and_then(|n| n.to_str());
    if program == Some("docker-credential-idpb") {
        // Installed under a helper's name: speak the docker-credential-helpers protocol.
        let action = argv.get(1).map_or("", String::as_str);
        if let Err(e) = idpb::cli::credential_helper(action) {
            println!("{e}");
            std::process::exit(1);
        }
        return;
    }
    if argv.get(1).map(String::as_str) == Some("docker-cli-plugin-metadata") {
        // Asked by the docker CLI before every invocation: answer at once, touch nothing.
        println!("{}", idpb::cli::plugin_metadata());
        return;
    }
    // The first signal cancels cleanly; a second means the user will not wait for the clean-up.
    let _ = idpb::signal::handle_signals();
    idpb::signal::watch_plugin_socket();
    let inv = idpb::cli::argv::normalize(&argv);
    if let [command, action] = inv.args.as_slice()
        && command == "credential"
        && !matches!(action.as_str(), "-h" | "--help")
    {
        // The helper protocol as a subcommand: errors on stdout, exit 1. `-h` is help, as for every command.
        if let Err(e) = idpb::cli::credential_helper(action) {
            println!("{e}");
            std::process::exit(1);
        }
        return;
    }
    let cli = match idpb::cli::help::parse(&inv) {
        Ok(cli) => cli,
        Err(idpb::cli::help::Early::Print(text)) => {
            print!("{text}");
            return;
        }
        Err(idpb::cli::help::Early::Fail(e)) => {
            eprintln!("docker-idpb: {}", idpb::cli::as_invoked(&e.to_string(), &inv));
            std::process::exit(e.exit_code());
        }
    };
    if let Err(e) = idpb::cli::run(cli, &inv) {
        eprintln!("docker-idpb: {}", idpb::cli::as_invoked(&e.to_string(), &inv));
        std::process::exit(e.exit_code());
    }
}
