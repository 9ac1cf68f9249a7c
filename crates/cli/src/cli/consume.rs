//! `quorumq consume`: a push consumer on the command line.

use std::time::Duration;

use clap::Args;
use quorumq_client::Client;
use quorumq_client::SubscribeOptions;

use super::Failure;
use super::client_cmds::{Output, fail, message_json, message_line};
use crate::parse_duration;

/// The server's limit on the prefetch.
const PREFETCH_MAX: u32 = 1000;
const PREFETCH_DEFAULT: u32 = 10;

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    queue: String,
    /// Most unacknowledged messages pushed at a time (1 to 1000; default
    /// 10, or --count without --ack).
    #[arg(long, value_name = "N")]
    prefetch: Option<u32>,
    /// Acknowledge each message, on the stream, after printing it. Without
    /// it, the messages stay unacknowledged until the command ends, and at
    /// most --prefetch of them are pushed.
    #[arg(long)]
    ack: bool,
    /// Stop after this many messages (default: run until Ctrl-C).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// A message held longer than this without an ack ends the stream with
    /// an error (default: the queue's visibility timeout).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    consumer_timeout: Option<Duration>,
}

/// Prints pushed messages until Ctrl-C or --count, like `recv`. When it
/// ends, the messages it did not ack become visible again at once.
pub async fn consume(client: &Client, out: Output, args: ConsumeArgs) -> Result<(), Failure> {
    if args.count == Some(0) {
        return Err(Failure::usage("--count must be at least 1"));
    }
    let prefetch = match (args.prefetch, args.count) {
        (Some(p), _) => p,
        // Without acks the node stops pushing at the prefetch: let it cover
        // the count when it can.
        (None, Some(count)) if !args.ack => count.clamp(u64::from(PREFETCH_DEFAULT), u64::from(PREFETCH_MAX)) as u32,
        (None, _) => PREFETCH_DEFAULT,
    };
    if prefetch == 0 || prefetch > PREFETCH_MAX {
        return Err(Failure::usage(format!("--prefetch must be between 1 and {PREFETCH_MAX}")));
    }
    if !args.ack && args.count.is_some_and(|c| c > u64::from(prefetch)) {
        return Err(Failure::usage(
            "without --ack at most --prefetch messages can be held at once: raise --prefetch or add --ack",
        ));
    }
    let options = SubscribeOptions { prefetch, consumer_timeout: args.consumer_timeout };
    let mut subscription = client.subscribe(&args.queue, options);
    let mut printed = 0u64;
    let mut ack_failures = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let outcome = loop {
        if args.count.is_some_and(|count| printed >= count) {
            break Ok(());
        }
        let message = tokio::select! {
            message = subscription.next() => message,
            _ = &mut ctrl_c => break Ok(()),
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => break Err(fail(e)),
        };
        if out.json {
            out.print_json(message_json(&message));
        } else {
            println!("{}", message_line(&message));
        }
        printed += 1;
        if args.ack
            && let Err(e) = subscription.ack(&message.receipt).await
        {
            ack_failures += 1;
            eprintln!("error: ack {}: {}", message.receipt, e.message());
        }
    };
    // Hand back what was pushed and not acked, and wait for the node to
    // take it, so that it is visible again when the command returns.
    subscription.close().await;
    outcome?;
    if ack_failures > 0 {
        return Err(Failure::from(format!("{ack_failures} of {printed} ack(s) failed")));
    }
    Ok(())
}
