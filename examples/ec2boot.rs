//! The bootstrap of EC2 machines: a bigmachine program with no services of its own. An instance
//! fetches it, checks its SHA-256 and runs it; the driver then uploads its own binary and the
//! machine re-executes into it. Publish a release build of it where instances can fetch it (see
//! the README, "Running on EC2").

#[tokio::main]
async fn main() {
    // On a machine, this serves until the driver is done with it, and never returns.
    match bigmachine::driver::start().await {
        Ok(_) => eprintln!(
            "ec2boot is the bootstrap of bigmachine's EC2 machines: instances run it; run by \
             hand it does nothing"
        ),
        Err(e) => {
            eprintln!("ec2boot: {e}");
            std::process::exit(1);
        }
    }
}
