using System.Collections.Concurrent;
using System.Net;
using Ferry.Core.ControlPlane;
using Ferry.Stun;
using Microsoft.Extensions.Logging;

namespace Ferry.Paths.Ice;

/// <summary>Sends a signaling message to the controller, which forwards it to the peer it names.</summary>
public delegate Task SignalAsync(CandidatesMessage message, CancellationToken cancellationToken);

/// <summary>
/// The connectivity-check side of one data-plane endpoint: an <see cref="IceSession"/> per remote peer, fed by signaling
/// (<see cref="CandidatesMessage"/> through the controller) and by the STUN packets that arrive on the endpoint's socket or over
/// its relays. The client end is controlling and offers first; the connector end answers every offer with its own candidates.
/// </summary>
public sealed partial class IceAgent : IAsyncDisposable
{
    private const int MaxSessions = 10_000;
    private const int MaxSignaledCandidates = 16;
    private static readonly TimeSpan AnswerWait = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan ReofferInterval = TimeSpan.FromSeconds(30);
    // A connector forgets a client's checks this long after the last one (its QUIC connection lives on by itself).
    private static readonly TimeSpan ControlledIdleLimit = TimeSpan.FromMinutes(2);

    private readonly bool _controlling;
    private readonly Func<ReadOnlyMemory<byte>, IPEndPoint, CancellationToken, ValueTask> _sendUdp;
    private readonly Func<string, ReadOnlyMemory<byte>, CancellationToken, ValueTask> _sendRelayed;
    private readonly Func<CancellationToken, Task<IReadOnlyList<Candidate>>> _gather;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<string, Entry> _byPeer = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Entry> _byUfrag = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<StunTransactionId, IceSession> _checks = new();
    private readonly CancellationTokenSource _stop = new();

    /// <param name="controlling">True on the client, which offers and picks paths; false on the connector, which answers.</param>
    /// <param name="sendUdp">Sends from the data-plane socket.</param>
    /// <param name="sendRelayed">Sends to a peer over the relays.</param>
    /// <param name="gather">This end's candidates now (host addresses, and what STUN learned).</param>
    /// <param name="logger">Where the search's events go, one line each.</param>
    public IceAgent(bool controlling, Func<ReadOnlyMemory<byte>, IPEndPoint, CancellationToken, ValueTask> sendUdp,
        Func<string, ReadOnlyMemory<byte>, CancellationToken, ValueTask> sendRelayed, Func<CancellationToken, Task<IReadOnlyList<Candidate>>> gather, ILogger logger)
    {
        _controlling = controlling;
        _sendUdp = sendUdp;
        _sendRelayed = sendRelayed;
        _gather = gather;
        _logger = logger;
    }

    /// <summary>Where the client's offers go (the controller session); a connector answers through the reply it is handed instead.</summary>
    public SignalAsync? Signal { get; set; }

    /// <summary>
    /// Client: learns this end's public addresses afresh (STUN) before an offer made because nothing direct answers any more;
    /// the NAT may have dropped the mapping the last offer named and given out another port.
    /// </summary>
    public Func<CancellationToken, Task>? Rediscover { get; set; }

    /// <summary>How many peers this endpoint is checking with now.</summary>
    public int SessionCount => _byPeer.Count;

    /// <summary>
    /// Client: starts checks with <paramref name="peer"/>: gathers this end's candidates, offers them through signaling, and
    /// checks the peer's once its answer comes. The session runs until <see cref="Stop"/>.
    /// </summary>
    /// <summary>Whether this end looks for direct paths at all; off keeps every connection on its relay (set before the first <see cref="Start"/>).</summary>
    public bool DirectPaths { get; set; } = true;

    public IceSession Start(string peer)
    {
        if (!_controlling)
        {
            throw new InvalidOperationException("Only the controlling end (the client) starts connectivity checks; the connector answers offers.");
        }
        var entry = NewEntry(peer);
        _byPeer.AddOrUpdate(peer, entry, (_, old) =>
        {
            old.Dispose(this);
            return entry;
        });
        Run(entry);
        _ = Task.Run(() => OfferLoopAsync(entry), CancellationToken.None);
        return entry.Session;
    }

    /// <summary>Ends the checks with <paramref name="peer"/> (its connection closed).</summary>
    public void Stop(IceSession session)
    {
        if (_byPeer.TryGetValue(session.Peer, out var entry) && ReferenceEquals(entry.Session, session) && _byPeer.TryRemove(new(session.Peer, entry)))
        {
            entry.Dispose(this);
        }
    }

    /// <summary>Why signaling with <paramref name="peer"/> failed, when it did (the controller refused or the peer never answered).</summary>
    public string? SignalingFailure(string peer) => _byPeer.TryGetValue(peer, out var entry) ? entry.SignalingFailure : null;

    /// <summary>The controller could not deliver an offer (the peer is offline, or the pair is not allowed).</summary>
    public void SignalingRefused(string peer, string reason)
    {
        if (_byPeer.TryGetValue(peer, out var entry))
        {
            entry.SignalingFailure = $"signaling refused: {reason}";
            LogSignalingRefused(_logger, peer, reason);
        }
    }

    /// <summary>Client, after a network change: gathers again and re-offers to every peer, so each search starts over from the new addresses.</summary>
    public void Restart()
    {
        foreach (var entry in _byPeer.Values)
        {
            entry.Reoffer();
        }
    }

    /// <summary>
    /// Signaling from <paramref name="message"/>.Peer. The connector creates or refreshes that peer's session and answers through
    /// <paramref name="reply"/> with its own candidates; the client takes the answer and starts checking.
    /// </summary>
    public async Task HandleSignalAsync(CandidatesMessage message, SignalAsync reply, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(message);
        var remote = IceCredentials.FromPeer(message.Ufrag, message.Password);
        if (remote is null)
        {
            LogBadSignal(_logger, message.Peer, "credentials of the wrong shape");
            return;
        }
        var candidates = (message.Candidates ?? []).Take(MaxSignaledCandidates)
            .Select(c => Candidate.TryParse(c, out var parsed) ? parsed : null).OfType<Candidate>().ToList();
        if (_controlling)
        {
            if (!message.Answer || !_byPeer.TryGetValue(message.Peer, out var entry))
            {
                return; // Only the connector answers; an answer for a session that ended is stale.
            }
            entry.Session.SetRemote(remote, candidates);
            entry.Answered();
            LogRemoteCandidates(_logger, message.Peer, Describe(candidates));
            return;
        }
        if (message.Answer)
        {
            return;
        }
        if (!_byPeer.TryGetValue(message.Peer, out var existing) || existing.Ended)
        {
            if (_byPeer.Count >= MaxSessions)
            {
                LogBadSignal(_logger, message.Peer, $"already checking with {MaxSessions} peers");
                return;
            }
            var fresh = NewEntry(message.Peer);
            existing = _byPeer.AddOrUpdate(message.Peer, fresh, (_, old) => old.Ended ? fresh : old);
            if (ReferenceEquals(existing, fresh))
            {
                Run(fresh);
            }
            else
            {
                fresh.Cancel.Dispose(); // Another offer from the same peer won the race; this one was never started.
            }
        }
        existing.Session.SetRemote(remote, candidates);
        LogRemoteCandidates(_logger, message.Peer, Describe(candidates));
        try
        {
            var local = await _gather(ct).ConfigureAwait(false);
            await reply(new CandidatesMessage(message.Peer, existing.Session.Local.Ufrag, existing.Session.Local.Password, [.. local.Select(c => c.ToInfo())], Answer: true), ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException or InvalidOperationException or IOException or System.Net.WebSockets.WebSocketException or ObjectDisposedException)
        {
            // The session with the controller ended: the client offers again when it sees no answer.
            LogBadSignal(_logger, message.Peer, $"cannot answer: {e.Message}");
        }
    }

    /// <summary>True when <paramref name="packet"/> is a STUN message for connectivity checks; <paramref name="relayPeer"/> is set when it came over a relay.</summary>
    public bool TryHandleStun(ReadOnlySpan<byte> packet, IPEndPoint? from, string? relayPeer)
    {
        if (!StunMessage.TryParse(packet, out var message, out _) || !message.HasFingerprint || message.Type.Method != StunMethod.Binding)
        {
            return false;
        }
        if (message.Type.Class == StunMessageClass.Request)
        {
            if (!message.TryGetUsername(out var username) || username.IndexOf(':', StringComparison.Ordinal) is not (> 0 and var colon)
                || !_byUfrag.TryGetValue(username[..colon], out var entry))
            {
                return true; // Checks for credentials we never gave out: dropped, so the socket reflects nothing.
            }
            // Over a relay, the relay vouches for the sender: only the session's own peer may check it that way.
            if (relayPeer is not null && relayPeer != entry.Session.Peer)
            {
                return true;
            }
            var response = entry.Session.HandleRequest(message, from);
            if (response is not null)
            {
                Send(response, from, entry.Session.Peer);
            }
            return true;
        }
        if (message.Type.Class is StunMessageClass.SuccessResponse or StunMessageClass.ErrorResponse)
        {
            if (_checks.TryGetValue(message.TransactionId, out var session))
            {
                session.HandleResponse(message, relayPeer is null ? from : null);
            }
        }
        return true;
    }

    private void Send(byte[] packet, IPEndPoint? to, string peer) => _ = SendAsync(packet, to, peer, _stop.Token).AsTask();

    private async ValueTask SendAsync(byte[] packet, IPEndPoint? to, string peer, CancellationToken ct)
    {
        try
        {
            if (to is null)
            {
                await _sendRelayed(peer, packet, ct).ConfigureAwait(false);
            }
            else
            {
                await _sendUdp(packet, to, ct).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Like any UDP datagram: lost. The peer retransmits its check.
        }
    }

    private Entry NewEntry(string peer)
        => new(new IceSession(peer, _controlling, IceCredentials.Create(), _checks), CancellationTokenSource.CreateLinkedTokenSource(_stop.Token));

    /// <summary>Makes a session that won its place in the table reachable by its credentials, and starts its checks.</summary>
    private void Run(Entry entry)
    {
        var session = entry.Session;
        var peer = session.Peer;
        _byUfrag[session.Local.Ufrag] = entry;
        entry.Loop = Task.Run(async () =>
        {
            try
            {
                await session.RunAsync((packet, to, ct) => SendAsync(packet, to, peer, ct), _controlling ? null : ControlledIdleLimit, entry.Cancel.Token).ConfigureAwait(false);
            }
            finally
            {
                if (!_controlling && _byPeer.TryRemove(new(peer, entry)))
                {
                    entry.Dispose(this);
                }
            }
        }, CancellationToken.None);
    }

    /// <summary>Offers this end's candidates until the peer answers (a few tries), and again now and then while no direct address works.</summary>
    private async Task OfferLoopAsync(Entry entry)
    {
        var ct = entry.Cancel.Token;
        var session = entry.Session;
        if (!DirectPaths)
        {
            // Without an offer the connector learns no address of ours and checks nothing: traffic stays on the relay.
            entry.SignalingFailure = "direct paths are turned off on this device (ferry client up --direct off)";
            return;
        }
        try
        {
            int unanswered = 0;
            var stale = false;
            while (!ct.IsCancellationRequested)
            {
                var answersBefore = entry.Answers;
                var signal = Signal;
                if (signal is null)
                {
                    entry.SignalingFailure = "no controller session to signal through";
                }
                else
                {
                    if (stale && Rediscover is { } rediscover)
                    {
                        // Without this the offer repeats a public address that may be gone: a NAT that renumbered its
                        // mapping (it expired, the router restarted) kept the path relayed for good.
                        stale = false;
                        await rediscover(ct).ConfigureAwait(false);
                    }
                    var local = await _gather(ct).ConfigureAwait(false);
                    LogOffer(_logger, session.Peer, Describe(local));
                    try
                    {
                        await signal(new CandidatesMessage(session.Peer, session.Local.Ufrag, session.Local.Password, [.. local.Select(c => c.ToInfo())]), ct).ConfigureAwait(false);
                    }
                    catch (Exception e) when (e is InvalidOperationException or IOException or System.Net.WebSockets.WebSocketException or ObjectDisposedException)
                    {
                        entry.SignalingFailure = $"cannot signal through the controller: {e.Message}";
                    }
                }
                await entry.WaitAnswerOrReofferAsync(AnswerWait, ct).ConfigureAwait(false);
                // Each offer needs its own answer: one sent on a controller session that died (the host moved) is lost.
                if (entry.Answers == answersBefore)
                {
                    if (++unanswered >= 3 && entry.SignalingFailure is null)
                    {
                        entry.SignalingFailure = $"{session.Peer} did not answer signaling within {unanswered * AnswerWait.TotalSeconds:0} s";
                    }
                    continue;
                }
                unanswered = 0;
                // Answered: offer again after a network change, or now and then while nothing direct works (the peer's side may have changed).
                while (true)
                {
                    var nudged = await entry.WaitAnswerOrReofferAsync(ReofferInterval, ct).ConfigureAwait(false);
                    if (entry.ReofferRequested)
                    {
                        entry.ReofferRequested = false;
                        break;
                    }
                    if (!nudged && !session.Snapshot().Targets.Any(t => t.Alive))
                    {
                        stale = true;
                        break;
                    }
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private static string Describe(IEnumerable<Candidate> candidates) => string.Join(", ", candidates.Select(c => c.ToString())) is { Length: > 0 } text ? text : "none";

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        foreach (var entry in _byPeer.Values)
        {
            entry.Dispose(this);
        }
        _byPeer.Clear();
        _stop.Dispose();
    }

    /// <summary>A session and what runs it.</summary>
    private sealed class Entry(IceSession session, CancellationTokenSource cancel)
    {
        private readonly Lock _lock = new();
        private TaskCompletionSource _nudge = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public IceSession Session { get; } = session;

        public CancellationTokenSource Cancel { get; } = cancel;

        public Task? Loop { get; set; }

        public volatile string? SignalingFailure;

        public volatile bool ReofferRequested;

        public bool Ended => Cancel.IsCancellationRequested || Loop is { IsCompleted: true };

        private int _answers;

        /// <summary>How many answers the peer has sent.</summary>
        public int Answers => Volatile.Read(ref _answers);

        public void Answered()
        {
            Interlocked.Increment(ref _answers);
            SignalingFailure = null;
            Nudge();
        }

        public void Reoffer()
        {
            ReofferRequested = true;
            Nudge();
        }

        private void Nudge()
        {
            lock (_lock)
            {
                _nudge.TrySetResult();
            }
        }

        /// <summary>True when an answer or a restart came before <paramref name="wait"/> ran out.</summary>
        public async Task<bool> WaitAnswerOrReofferAsync(TimeSpan wait, CancellationToken ct)
        {
            Task nudge;
            lock (_lock)
            {
                nudge = _nudge.Task;
            }
            try
            {
                await nudge.WaitAsync(wait, ct).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                return false;
            }
            lock (_lock)
            {
                if (ReferenceEquals(_nudge.Task, nudge))
                {
                    _nudge = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                }
            }
            return true;
        }

        public void Dispose(IceAgent agent)
        {
            agent._byUfrag.TryRemove(new(Session.Local.Ufrag, this));
            Session.ForgetPending();
            try
            {
                Cancel.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }
    }

    [LoggerMessage(520, LogLevel.Information, "Direct path search with {Peer}: offering {Candidates}")]
    private static partial void LogOffer(ILogger logger, string peer, string candidates);

    [LoggerMessage(521, LogLevel.Information, "Direct path search with {Peer}: its candidates are {Candidates}")]
    private static partial void LogRemoteCandidates(ILogger logger, string peer, string candidates);

    [LoggerMessage(522, LogLevel.Warning, "Signaling from {Peer} ignored: {Reason}")]
    private static partial void LogBadSignal(ILogger logger, string peer, string reason);

    [LoggerMessage(523, LogLevel.Warning, "Direct path search with {Peer}: the controller refused signaling: {Reason}")]
    private static partial void LogSignalingRefused(ILogger logger, string peer, string reason);
}
