//! The `docker-idpb` binary: parse the command line, run it, print the one-line error if it fails.

fn main() {
    idpb::signal::install();
    let args: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match <idpb::cli::Cli as argh::FromArgs>::from_args(&["docker-idpb"], &strs[1..]) {
        Ok(cli) => cli,
        Err(early) => {
            if early.status.is_ok() {
                print!("{}", early.output);
                std::process::exit(0);
            }
            eprint!("{}", early.output);
            eprintln!("Run 'docker-idpb help' for usage.");
            std::process::exit(2);
        }
    };
    if let Err(e) = idpb::cli::run(cli) {
        eprintln!("docker-idpb: {e}");
        std::process::exit(e.exit_code());
    }
}
