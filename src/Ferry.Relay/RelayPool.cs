using System.Collections.Concurrent;
using System.Security.Cryptography.X509Certificates;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Ferry.Core.Security;

namespace Ferry.Relay;

/// <summary>Links to several relays with automatic failover, presenting one send/receive surface to the QUIC layer.</summary>
/// <remarks>
/// Tickets are bound on every live link, packets go out through the most preferred link where the other peer is present,
/// and a lost link is re-dialled and re-bound in the background.
/// Binding every ticket on every relay is what makes failover need no coordination: when a relay dies, both peers lose it at
/// the same moment, and each is already bound on the others, so each side's next packet simply takes its next relay and
/// arrives, whichever relay the other side prefers. Relays do not talk to each other, so both peers must share at least one;
/// the relay's presence notices (PeerState) steer packets away from a relay the other peer lost alone, or never had.
/// </remarks>
public sealed partial class RelayPool : IAsyncDisposable
{
    // A link that stayed up this long is considered healthy, so losing it starts the reconnect backoff afresh.
    private static readonly TimeSpan StableLinkAge = TimeSpan.FromSeconds(30);

    private readonly RelayPoolOptions _options;
    private readonly ILogger _logger;
    private readonly Slot[] _slots;
    private readonly Channel<RelayPacket> _inbound;
    private readonly ConcurrentDictionary<string, string> _tickets = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _disposing = new();
    private readonly string _localIdentity;
    private Task[] _supervisors = [];
    private int _started;

    /// <summary>Creates the pool; <see cref="StartAsync"/> dials the relays.</summary>
    public RelayPool(RelayPoolOptions options, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(options.Link);
        if (options.Relays is null || options.Relays.Count == 0)
        {
            throw new ArgumentException("A relay pool needs at least one relay.", nameof(options));
        }

        _options = options;
        _logger = logger ?? NullLogger.Instance;
        _localIdentity = PeerIdentity.FromCertificate(options.Link.ClientCertificate)
            ?? throw new ArgumentException("The client certificate CN must be kind/id.", nameof(options));
        _slots = [.. options.Relays.Select(r => new Slot(r))];
        _inbound = Channel.CreateBounded<RelayPacket>(new BoundedChannelOptions(Math.Max(1, options.InboundQueueCapacity))
        {
            FullMode = BoundedChannelFullMode.Wait,
        });
    }

    /// <summary>Packets from remote peers through any relay of the pool; completes when the pool is disposed.</summary>
    public ChannelReader<RelayPacket> Packets => _inbound.Reader;

    /// <summary>The identity of the relay new packets currently go through (the first open link), or null when none is open.</summary>
    public string? ActiveRelay => _slots.Select(s => s.Link).FirstOrDefault(l => l is { State: RelayLinkState.Open })?.RelayIdentity;

    /// <summary>Identities of the relays with an open link, in preference order.</summary>
    public IReadOnlyList<string> ConnectedRelays => [.. _slots.Select(s => s.Link).Where(l => l is { State: RelayLinkState.Open }).Select(l => l!.RelayIdentity)];

    /// <summary>The relay that packets to <paramref name="remotePeer"/> would take right now (null when none can), for diagnostics and path labels.</summary>
    public string? RelayFor(string remotePeer)
    {
        RelayLink? fallback = null;
        foreach (var slot in _slots)
        {
            var link = slot.Link;
            if (link is null || !link.IsBound(remotePeer))
            {
                continue;
            }

            if (link.IsPeerPresent(remotePeer))
            {
                return link.RelayIdentity;
            }

            fallback ??= link;
        }

        return fallback?.RelayIdentity;
    }

    /// <summary>Whether <paramref name="remotePeer"/> has bound its side of the ticket on a relay this pool is linked to.</summary>
    public bool IsPeerPresent(string remotePeer) => _slots.Any(s => s.Link is { } link && link.IsPeerPresent(remotePeer));

    /// <summary>Received packets dropped because the application was not reading them fast enough.</summary>
    public long PacketsDropped => Interlocked.Read(ref _packetsDropped);

    /// <summary>The tickets this pool holds, so a pool for a new relay list can be given the same ones.</summary>
    public IReadOnlyList<string> Tickets => [.. _tickets.Values];

    private long _packetsDropped;

    /// <summary>Starts one supervisor per relay and returns once each has made its first connection attempt.</summary>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        if (Interlocked.Exchange(ref _started, 1) != 0)
        {
            throw new InvalidOperationException("The pool was already started.");
        }

        _supervisors = [.. _slots.Select(slot => Task.Run(() => SuperviseAsync(slot, _disposing.Token), CancellationToken.None))];
        await Task.WhenAll(_slots.Select(s => s.FirstAttempt.Task)).WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Checks a ticket locally, remembers it, and binds it on every open link (and on every link opened later). Returns the
    /// bindings made now, possibly none when no relay is connected yet. Throws <see cref="RelayException"/> with the reason
    /// when the ticket is invalid for this peer or every connected relay refused it. A later ticket for the same pair replaces
    /// the earlier one, which is how tickets are renewed before they expire.
    /// </summary>
    public async Task<IReadOnlyList<RelayBinding>> BindAsync(string ticket, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(ticket);
        string remote;
        using (var caKey = _options.Link.CaCertificate.GetECDsaPublicKey())
        {
            if (caKey is null)
            {
                throw new InvalidOperationException("The CA certificate holds no ECDSA key.");
            }

            var refusal = RelayTicket.VerifyFor(ticket, _localIdentity, caKey, _options.Link.TimeProvider, out var parsed, out var error);
            if (refusal != RelayRefusal.None)
            {
                throw new RelayException(refusal, $"ticket not usable by {_localIdentity}: {error}");
            }

            // Stored before binding, so a link that comes up while we bind still gets it from its re-bind pass.
            remote = parsed!.OtherPeer(_localIdentity)!;
            _tickets[remote] = ticket;
        }

        var links = _slots.Select(s => s.Link).Where(l => l is { State: RelayLinkState.Open }).Select(l => l!).ToArray();
        var attempts = links.Select(l => l.BindAsync(ticket, cancellationToken)).ToArray();
        var bindings = new List<RelayBinding>();
        RelayException? refused = null;
        foreach (var attempt in attempts)
        {
            try
            {
                bindings.Add(await attempt.ConfigureAwait(false));
            }
            catch (RelayException ex)
            {
                // A link that ended mid-bind is not a verdict on the ticket; the supervisor re-binds on reconnect.
                if (ex.Reason is not (RelayRefusal.None or RelayRefusal.ShuttingDown or RelayRefusal.Replaced or RelayRefusal.IdleTimeout))
                {
                    refused = ex;
                }
            }
        }

        if (bindings.Count == 0 && refused is not null)
        {
            _tickets.TryRemove(new KeyValuePair<string, string>(remote, ticket));
            throw refused;
        }

        return bindings;
    }

    /// <summary>Forgets the ticket for <paramref name="remotePeer"/> and releases its bindings on every link.</summary>
    public void Unbind(string remotePeer)
    {
        _tickets.TryRemove(remotePeer, out _);
        foreach (var slot in _slots)
        {
            slot.Link?.Unbind(remotePeer);
        }
    }

    /// <summary>
    /// Sends a packet to a remote peer through the most preferred open link that has the pair bound. Returns false (the packet
    /// is lost, as on UDP) only when no link can carry it right now; failover is otherwise invisible to the caller.
    /// </summary>
    public async ValueTask<bool> SendAsync(string remotePeer, ReadOnlyMemory<byte> packet, CancellationToken cancellationToken = default)
    {
        RelayLink? fallback = null;
        foreach (var slot in _slots)
        {
            var link = slot.Link;
            if (link is null || !link.IsBound(remotePeer))
            {
                continue;
            }

            // Prefer a relay where the other end is known to be; the relay says so at bind time and whenever it changes.
            if (!link.IsPeerPresent(remotePeer))
            {
                fallback ??= link;
                continue;
            }

            if (await link.SendAsync(remotePeer, packet, cancellationToken).ConfigureAwait(false))
            {
                return true;
            }
        }

        // Nobody reported present (the other end may be reconnecting right now): try the most preferred bound link anyway,
        // since a packet that gets through also corrects a stale presence notice.
        return fallback is not null && await fallback.SendAsync(remotePeer, packet, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Closes every link and stops reconnecting.</summary>
    public async ValueTask DisposeAsync()
    {
        await _disposing.CancelAsync().ConfigureAwait(false);
        try
        {
            await Task.WhenAll(_supervisors).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // Supervisors end on their own once their links close; disposal must not hang.
        }

        _inbound.Writer.TryComplete();
        _disposing.Dispose();
    }

    private async Task SuperviseAsync(Slot slot, CancellationToken cancellationToken)
    {
        var clock = _options.Link.TimeProvider;
        var delay = _options.ReconnectDelay;
        while (!cancellationToken.IsCancellationRequested)
        {
            RelayLink link;
            try
            {
                link = await RelayLink.ConnectAsync(slot.Endpoint, _options.Link, new CountingWriter(this), _logger, cancellationToken).ConfigureAwait(false);
            }
            catch (RelayException ex)
            {
                LogConnectFailed(_logger, _localIdentity, slot.Endpoint, ex.Reason, ex.Message);
                slot.FirstAttempt.TrySetResult();
                try
                {
                    await Task.Delay(delay, clock, cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;
                }

                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, _options.MaxReconnectDelay.Ticks));
                continue;
            }
            catch (OperationCanceledException)
            {
                break;
            }

            var upSince = clock.GetTimestamp();
            slot.Link = link;
            await RebindAsync(link, cancellationToken).ConfigureAwait(false);
            slot.FirstAttempt.TrySetResult();
            LogRelayUp(_logger, _localIdentity, link.RelayIdentity, _tickets.Count);

            var closure = await link.Completion.WaitAsync(cancellationToken).ContinueWith(
                static t => t.IsCompletedSuccessfully ? t.Result : null,
                CancellationToken.None,
                TaskContinuationOptions.ExecuteSynchronously,
                TaskScheduler.Default).ConfigureAwait(false);
            slot.Link = null;
            if (closure is null)
            {
                await link.DisposeAsync().ConfigureAwait(false);
                break;
            }

            LogRelayLost(_logger, _localIdentity, link.RelayIdentity, closure.Reason, closure.Message);
            await link.DisposeAsync().ConfigureAwait(false);

            // Wait before re-dialling even after a good link: two processes sharing one identity would otherwise replace
            // each other on the relay in a tight loop. A link that lived long resets the backoff; a short one grows it.
            delay = clock.GetElapsedTime(upSince) > StableLinkAge
                ? _options.ReconnectDelay
                : TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, _options.MaxReconnectDelay.Ticks));
            try
            {
                await Task.Delay(delay, clock, cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }

        slot.FirstAttempt.TrySetResult();
    }

    private async Task RebindAsync(RelayLink link, CancellationToken cancellationToken)
    {
        foreach (var (remote, ticket) in _tickets)
        {
            try
            {
                await link.BindAsync(ticket, cancellationToken).ConfigureAwait(false);
            }
            catch (RelayException ex)
            {
                // Typically an expired ticket the owner has not renewed yet; the other pairs still go through.
                LogRebindFailed(_logger, _localIdentity, link.RelayIdentity, remote, ex.Reason, ex.Message);
                if (link.State != RelayLinkState.Open)
                {
                    return;
                }
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    [LoggerMessage(EventId = 201, Level = LogLevel.Information, Message = "{Peer} relay {Relay} up, {Tickets} tickets bound")]
    private static partial void LogRelayUp(ILogger logger, string peer, string relay, int tickets);

    [LoggerMessage(EventId = 202, Level = LogLevel.Warning, Message = "{Peer} lost relay {Relay} ({Reason}): {Detail}; traffic moves to the next relay")]
    private static partial void LogRelayLost(ILogger logger, string peer, string relay, RelayRefusal reason, string detail);

    [LoggerMessage(EventId = 203, Level = LogLevel.Warning, Message = "{Peer} could not reach relay {Endpoint} ({Reason}): {Detail}")]
    private static partial void LogConnectFailed(ILogger logger, string peer, RelayEndpoint endpoint, RelayRefusal reason, string detail);

    [LoggerMessage(EventId = 204, Level = LogLevel.Warning, Message = "{Peer} re-binding {RemotePeer} on relay {Relay} refused ({Reason}): {Detail}")]
    private static partial void LogRebindFailed(ILogger logger, string peer, string relay, string remotePeer, RelayRefusal reason, string detail);

    /// <summary>One configured relay and its current link.</summary>
    private sealed class Slot(RelayEndpoint endpoint)
    {
        private RelayLink? _link;

        public RelayEndpoint Endpoint { get; } = endpoint;

        public RelayLink? Link
        {
            get => Volatile.Read(ref _link);
            set => Volatile.Write(ref _link, value);
        }

        public TaskCompletionSource FirstAttempt { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>Feeds every link's packets into the pool's one channel, counting what overflows.</summary>
    private sealed class CountingWriter(RelayPool pool) : ChannelWriter<RelayPacket>
    {
        public override bool TryWrite(RelayPacket item)
        {
            if (!pool._inbound.Writer.TryWrite(item))
            {
                Interlocked.Increment(ref pool._packetsDropped);
            }

            // Report success either way: the link must not count the same drop again or treat it as failure.
            return true;
        }

        public override ValueTask<bool> WaitToWriteAsync(CancellationToken cancellationToken = default) =>
            pool._inbound.Writer.WaitToWriteAsync(cancellationToken);
    }
}
