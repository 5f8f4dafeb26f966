//! `klav-bench <scenario> [flags]`: see `--help` and bench/README.md.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match klav_bench::cli::parse(&args) {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{}", klav_bench::cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("klav-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match klav_bench::run(&command.options) {
        Ok(report) => {
            println!("{report}");
            if command.json {
                println!("{}", report.to_json());
            }
            // `dm` always checks: its point is that every DM arrives once, in order.
            let check = command.check || report.scenario == "dm";
            if check && !report.is_clean() {
                eprintln!(
                    "klav-bench: {} FAILED: {}",
                    report.scenario,
                    report.problems().join("; ")
                );
                return ExitCode::from(3);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("klav-bench: {e}");
            ExitCode::from(1)
        }
    }
}
