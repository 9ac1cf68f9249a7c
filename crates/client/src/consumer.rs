//! A long-polling consumer that hands out one delivery at a time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::route::Backoff;
use crate::{Client, Error, Message, ReceiveOptions};

/// How a [`Consumer`] receives.
///
/// ```
/// use std::time::Duration;
/// use quorumq_client::ConsumerOptions;
///
/// let options = ConsumerOptions { batch: 1, ..ConsumerOptions::default() };
/// assert_eq!(options.wait, Duration::from_secs(20));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerOptions {
    /// Messages asked for per receive (server limit 1000). They wait in the
    /// consumer's buffer until `next` hands them out, and their visibility
    /// timeout runs meanwhile: keep `batch` small enough to work through a
    /// batch well within the visibility timeout.
    pub batch: u32,
    /// Long-poll wait of each receive (server limit 20 s).
    pub wait: Duration,
    /// Overrides the queue's visibility timeout for these deliveries.
    pub visibility_timeout: Option<Duration>,
}

impl Default for ConsumerOptions {
    /// Batches of 10, 20 s long polls, the queue's visibility timeout.
    fn default() -> ConsumerOptions {
        ConsumerOptions { batch: 10, wait: Duration::from_secs(20), visibility_timeout: None }
    }
}

/// Receives from one queue in a loop and hands out one [`Delivery`] at a
/// time. Made by [`Client::consumer`].
///
/// It never spins: when a receive returns nothing, the long poll itself has
/// waited (and when it answered early, or `wait` is zero, the consumer
/// pauses with backoff before polling again); after an error, the next call
/// to [`Consumer::next`] pauses with backoff first.
///
/// ```no_run
/// # async fn demo(client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
/// use quorumq_client::ConsumerOptions;
///
/// let mut consumer = client.consumer("jobs", ConsumerOptions::default());
/// loop {
///     let delivery = consumer.next().await?;
///     println!("working on {:?}", delivery.body());
///     delivery.ack().await?;
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    queue: Arc<str>,
    options: ConsumerOptions,
    buffer: VecDeque<Message>,
    backoff: Backoff,
    /// A pause owed before the next receive (after an error or an early
    /// empty answer).
    pause: Option<Duration>,
}

impl Client {
    /// A consumer of `queue`.
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// let consumer = client.consumer("jobs", Default::default());
    /// assert_eq!(consumer.queue(), "jobs");
    /// ```
    pub fn consumer(&self, queue: &str, options: ConsumerOptions) -> Consumer {
        Consumer {
            client: self.clone(),
            queue: Arc::from(queue),
            options,
            buffer: VecDeque::new(),
            backoff: Backoff::new(self.inner.backoff_initial, self.inner.backoff_max),
            pause: None,
        }
    }
}

impl Consumer {
    /// The next delivery: from the buffer, or from a new (long-polling)
    /// receive. Waits as long as it takes for a message to arrive; returns
    /// an error when a receive fails after its own retries (queue deleted,
    /// cluster unavailable for the whole deadline). Calling `next` again
    /// after an error is fine: it backs off first.
    ///
    /// Cancelling `next` (dropping its future) loses no buffered message;
    /// the messages of a receive cut short stay in flight until their
    /// visibility timeout and are then delivered again.
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: quorumq_client::Consumer) -> Result<(), quorumq_client::Error> {
    /// let delivery = consumer.next().await?;
    /// delivery.ack().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next(&mut self) -> Result<Delivery, Error> {
        loop {
            if let Some(message) = self.buffer.pop_front() {
                return Ok(Delivery { message, client: self.client.clone(), queue: Arc::clone(&self.queue) });
            }
            if let Some(pause) = self.pause.take() {
                tokio::time::sleep(pause).await;
            }
            let options = ReceiveOptions {
                max_messages: self.options.batch,
                wait: self.options.wait,
                visibility_timeout: self.options.visibility_timeout,
            };
            let started = Instant::now();
            match self.client.receive(&self.queue, options).await {
                Ok(messages) if messages.is_empty() => {
                    if self.options.wait.is_zero() || started.elapsed() < self.options.wait {
                        self.pause = Some(self.backoff.next_pause());
                    } else {
                        self.backoff.reset();
                    }
                }
                Ok(messages) => {
                    self.backoff.reset();
                    self.buffer.extend(messages);
                }
                Err(error) => {
                    self.pause = Some(self.backoff.next_pause());
                    return Err(error);
                }
            }
        }
    }

    /// The queue this consumer receives from.
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// assert_eq!(client.consumer("jobs", Default::default()).queue(), "jobs");
    /// ```
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Messages received and not yet handed out by [`Consumer::next`].
    ///
    /// ```
    /// let client = quorumq_client::Client::connect(["127.0.0.1:7000"]).unwrap();
    /// assert_eq!(client.consumer("jobs", Default::default()).buffered(), 0);
    /// ```
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}

/// One delivered message, with the means to settle it.
///
/// ```no_run
/// # async fn demo(mut consumer: quorumq_client::Consumer) -> Result<(), quorumq_client::Error> {
/// let delivery = consumer.next().await?;
/// if delivery.body().is_empty() {
///     delivery.nack().await?; // let another consumer try
/// } else {
///     delivery.ack().await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Delivery {
    message: Message,
    client: Client,
    queue: Arc<str>,
}

impl Delivery {
    /// The message and its delivery details.
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: quorumq_client::Consumer) -> Result<(), quorumq_client::Error> {
    /// let delivery = consumer.next().await?;
    /// if delivery.message().receive_count > 3 {
    ///     eprintln!("message {} keeps failing", delivery.message().id);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message body.
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: quorumq_client::Consumer) -> Result<(), quorumq_client::Error> {
    /// let delivery = consumer.next().await?;
    /// let text = String::from_utf8_lossy(delivery.body());
    /// # Ok(())
    /// # }
    /// ```
    pub fn body(&self) -> &Bytes {
        &self.message.body
    }

    /// The message, giving up the means to settle it here (its receipt
    /// still works with [`Client::ack`]).
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: quorumq_client::Consumer, client: quorumq_client::Client) -> Result<(), quorumq_client::Error> {
    /// let message = consumer.next().await?.into_message();
    /// client.ack("jobs", message.receipt).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn into_message(self) -> Message {
        self.message
    }

    /// The queue it came from.
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: quorumq_client::Consumer) -> Result<(), quorumq_client::Error> {
    /// assert_eq!(consumer.next().await?.queue(), consumer.queue());
    /// # Ok(())
    /// # }
    /// ```
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Acknowledges (deletes) the message. See [`Client::ack`]; a failed
    /// ack may be retried on the same delivery.
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: quorumq_client::Consumer) -> Result<(), quorumq_client::Error> {
    /// consumer.next().await?.ack().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ack(&self) -> Result<(), Error> {
        self.client.ack(&self.queue, &self.message.receipt).await
    }

    /// Gives the message back for redelivery now. See [`Client::nack`].
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: quorumq_client::Consumer) -> Result<(), quorumq_client::Error> {
    /// consumer.next().await?.nack().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn nack(&self) -> Result<(), Error> {
        self.client.nack(&self.queue, &self.message.receipt).await
    }

    /// Keeps the message invisible for `timeout` from now. See
    /// [`Client::change_visibility`].
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: quorumq_client::Consumer) -> Result<(), quorumq_client::Error> {
    /// use std::time::Duration;
    /// let delivery = consumer.next().await?;
    /// delivery.change_visibility(Duration::from_secs(300)).await?; // a long job
    /// delivery.ack().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn change_visibility(&self, timeout: Duration) -> Result<(), Error> {
        self.client.change_visibility(&self.queue, &self.message.receipt, timeout).await
    }
}
