using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using Ferry.Stun;

namespace Ferry.Paths.Ice;

/// <summary>
/// Connectivity checks with one remote peer, in the spirit of ICE (RFC 8445): STUN Binding requests signed with the peer's
/// short-term password go from this end's one UDP socket to each of the peer's candidates, both ends at once so that each
/// NAT opens for the other. An authenticated request from an address nobody signaled becomes a peer-reflexive candidate and
/// is checked back at once. The controlling end (the client) keeps checking working addresses (consent, RFC 7675) and probes
/// the relayed path the same way, so the <see cref="PathSelector"/> can compare round-trip times; the controlled end (the
/// connector) answers, and checks only while a search is on.
/// </summary>
public sealed class IceSession
{
    /// <summary>A direct address that has not answered for this long is considered gone.</summary>
    public static readonly TimeSpan ConsentTimeout = TimeSpan.FromSeconds(2.5);

    /// <summary>The relayed path, probed once a second, is considered gone after this long without an answer.</summary>
    public static readonly TimeSpan RelayTimeout = TimeSpan.FromSeconds(5);

    // A search burst: 8 transmissions 100, 200, 400, 800 and 4 × 1600 ms apart, about 8 s in all (RFC 8489's schedule, shortened).
    internal const int SearchTransmissions = 8;
    private const int MaxTargets = 24;
    private static readonly TimeSpan ActiveInterval = TimeSpan.FromMilliseconds(500);
    private static readonly TimeSpan KeepInterval = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan RelayProbeInterval = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan ResearchInterval = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan TriggeredSpacing = TimeSpan.FromMilliseconds(200);
    private static readonly TimeSpan PendingLifetime = TimeSpan.FromSeconds(10);

    private readonly Lock _lock = new();
    private readonly Dictionary<IPEndPoint, CheckTarget> _targets = [];
    private readonly Dictionary<StunTransactionId, Pending> _pending = [];
    // The agent's index of every session's outstanding checks, so a response finds its session without a search.
    private readonly ConcurrentDictionary<StunTransactionId, IceSession> _index;
    private readonly ulong _tieBreaker = BitConverter.ToUInt64(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));
    private readonly SemaphoreSlim _wake = new(0);
    private IceCredentials? _remote;
    private IPEndPoint? _active;
    private double? _relaySrttMs;
    private long _relayLastAnswer;
    private long _relayNextDue;
    private long _lastActivity = Stopwatch.GetTimestamp();

    internal IceSession(string peer, bool controlling, IceCredentials local, ConcurrentDictionary<StunTransactionId, IceSession> index)
    {
        _index = index;
        Peer = peer;
        Controlling = controlling;
        Local = local;
        Started = Stopwatch.GetTimestamp();
    }

    /// <summary>The other end's identity ("connector/…" or "device/…").</summary>
    public string Peer { get; }

    /// <summary>The client controls: it picks the path; the connector follows its QUIC migrations.</summary>
    public bool Controlling { get; }

    public IceCredentials Local { get; }

    /// <summary>When the session started (a <see cref="Stopwatch"/> timestamp).</summary>
    public long Started { get; }

    /// <summary>Whether signaling has delivered the peer's credentials yet.</summary>
    public bool HasRemote
    {
        get
        {
            lock (_lock)
            {
                return _remote is not null;
            }
        }
    }

    /// <summary>The direct address traffic uses now, checked every 500 ms so its loss is noticed within <see cref="ConsentTimeout"/>.</summary>
    public IPEndPoint? Active
    {
        get
        {
            lock (_lock)
            {
                return _active;
            }
        }
        set
        {
            lock (_lock)
            {
                _active = value;
            }
        }
    }

    /// <summary>
    /// Takes the peer's credentials and candidates (from signaling). Every address not answering now starts a new search burst,
    /// so a repeated offer after a network change searches again; new addresses are added up to a bound.
    /// </summary>
    public void SetRemote(IceCredentials remote, IEnumerable<Candidate> candidates)
    {
        lock (_lock)
        {
            _remote = remote;
            long now = Stopwatch.GetTimestamp();
            foreach (var candidate in candidates)
            {
                if (_targets.TryGetValue(candidate.EndPoint, out var known))
                {
                    // A check from this address may have come before the offer naming it: what the peer signals says what it is.
                    if (known.Candidate.Kind == CandidateKind.PeerReflexive && candidate.Kind != CandidateKind.PeerReflexive)
                    {
                        known.Candidate = candidate;
                    }
                }
                else if (_targets.Count < MaxTargets)
                {
                    _targets[candidate.EndPoint] = new CheckTarget(candidate);
                }
            }
            foreach (var target in _targets.Values)
            {
                if (!target.IsAlive(now))
                {
                    target.StartBurst(now, SearchTransmissions);
                }
            }
            _relayNextDue = now;
            _lastActivity = now;
        }
        Wake();
    }

    /// <summary>What the checks found so far, for the path selector and status.</summary>
    public IceSnapshot Snapshot()
    {
        lock (_lock)
        {
            long now = Stopwatch.GetTimestamp();
            var targets = _targets.Values.Select(t => new TargetSnapshot(t.Candidate, t.IsAlive(now), t.SrttMs, t.LastAnswer != 0, t.Transmissions, t.BurstFailed)).ToArray();
            bool relayAlive = _relayLastAnswer != 0 && Stopwatch.GetElapsedTime(_relayLastAnswer, now) < RelayTimeout;
            return new IceSnapshot(_remote is not null, targets, relayAlive, _relaySrttMs);
        }
    }

    /// <summary>
    /// Answers a check the peer sent (to this end's credentials, already routed by USERNAME). Returns the signed success response,
    /// or null when the request does not verify. <paramref name="from"/> is null for a check that came over the relay.
    /// </summary>
    internal byte[]? HandleRequest(scoped in StunMessage request, IPEndPoint? from)
    {
        if (!request.VerifyMessageIntegrity(Local.Key))
        {
            return null;
        }
        bool wake = false;
        lock (_lock)
        {
            long now = Stopwatch.GetTimestamp();
            _lastActivity = now;
            if (from is not null)
            {
                if (!_targets.TryGetValue(from, out var target) && _targets.Count < MaxTargets)
                {
                    // Nobody signaled this address: the peer's NAT chose it for us, so it is the one that works.
                    var priority = request.TryGetPriority(out var p) ? p : Candidate.PriorityOf(CandidateKind.PeerReflexive, 0);
                    target = new CheckTarget(new Candidate(CandidateKind.PeerReflexive, from, priority));
                    _targets[from] = target;
                }
                if (target is not null && _remote is not null && !target.IsAlive(now) && Stopwatch.GetElapsedTime(target.LastTriggered, now) >= TriggeredSpacing)
                {
                    // Triggered check: the peer's request just opened our NAT's way back to it, or theirs towards us.
                    target.LastTriggered = now;
                    target.StartBurst(now, Math.Max(target.Remaining, 3));
                    wake = true;
                }
            }
        }
        if (wake)
        {
            Wake();
        }
        var buffer = new byte[128];
        var writer = new StunMessageWriter(buffer, StunMessageType.BindingSuccess, request.TransactionId);
        if (from is not null)
        {
            writer.AddXorMappedAddress(from);
        }
        writer.AddMessageIntegrity(Local.Key);
        writer.AddFingerprint();
        return buffer[..writer.Length];
    }

    /// <summary>Drops this session's outstanding checks from the agent's index (the session ended).</summary>
    internal void ForgetPending()
    {
        lock (_lock)
        {
            foreach (var id in _pending.Keys)
            {
                _index.TryRemove(new(id, this));
            }
            _pending.Clear();
        }
    }

    /// <summary>A response to one of this session's checks: the address (or the relay) answered; its round trip updates the estimate.</summary>
    internal bool HandleResponse(scoped in StunMessage response, IPEndPoint? from)
    {
        lock (_lock)
        {
            if (!_pending.TryGetValue(response.TransactionId, out var pending))
            {
                return false;
            }
            // The answer must come from where the check went (RFC 8445 §7.2.5.2.1) and be signed by the peer.
            bool sameWay = pending.Target is null ? from is null : from is not null && pending.Target.Equals(from);
            if (!sameWay || response.Type.Class != StunMessageClass.SuccessResponse || !response.VerifyMessageIntegrity(pending.Key))
            {
                return false;
            }
            _pending.Remove(response.TransactionId);
            _index.TryRemove(new(response.TransactionId, this));
            long now = Stopwatch.GetTimestamp();
            double rtt = Stopwatch.GetElapsedTime(pending.Sent, now).TotalMilliseconds;
            _lastActivity = now;
            if (pending.Target is null)
            {
                _relayLastAnswer = now;
                _relaySrttMs = Smooth(_relaySrttMs, rtt);
            }
            else if (_targets.TryGetValue(pending.Target, out var target))
            {
                target.Answered(now, rtt);
            }
            return true;
        }
    }

    /// <summary>Sends what is due and sleeps until the next thing is; the controlled end stops after <paramref name="idleLimit"/> without checks.</summary>
    internal async Task RunAsync(Func<byte[], IPEndPoint?, CancellationToken, ValueTask> send, TimeSpan? idleLimit, CancellationToken ct)
    {
        var due = new List<(byte[] Packet, IPEndPoint? To)>();
        while (!ct.IsCancellationRequested)
        {
            TimeSpan wait;
            lock (_lock)
            {
                long now = Stopwatch.GetTimestamp();
                if (idleLimit is { } limit && Stopwatch.GetElapsedTime(_lastActivity, now) > limit)
                {
                    return;
                }
                wait = CollectDue(now, due);
            }
            foreach (var (packet, to) in due)
            {
                try
                {
                    await send(packet, to, ct).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
                {
                    // A check that cannot leave (no route, relay reconnecting) is a check without an answer.
                }
            }
            due.Clear();
            try
            {
                await _wake.WaitAsync(wait, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private TimeSpan CollectDue(long now, List<(byte[] Packet, IPEndPoint? To)> due)
    {
        ForgetStalePending(now);
        var next = TimeSpan.FromSeconds(1);
        if (_remote is not { } remote)
        {
            return next;
        }
        foreach (var target in _targets.Values)
        {
            if (target.NextDue == 0)
            {
                continue;
            }
            var untilDue = Stopwatch.GetElapsedTime(now, target.NextDue);
            if (untilDue <= TimeSpan.Zero)
            {
                if (target.Due(now, Controlling, Equals(target.Candidate.EndPoint, _active) ? ActiveInterval : KeepInterval, ResearchInterval))
                {
                    due.Add((Request(remote, target.Candidate.EndPoint, now), target.Candidate.EndPoint));
                }
                if (target.NextDue == 0)
                {
                    continue;
                }
                untilDue = Stopwatch.GetElapsedTime(now, target.NextDue);
            }
            next = Min(next, untilDue);
        }
        if (Controlling)
        {
            var untilRelay = Stopwatch.GetElapsedTime(now, _relayNextDue);
            if (untilRelay <= TimeSpan.Zero)
            {
                due.Add((Request(remote, null, now), null));
                _relayNextDue = now + (long)(RelayProbeInterval.TotalSeconds * Stopwatch.Frequency);
                untilRelay = RelayProbeInterval;
            }
            next = Min(next, untilRelay);
        }
        return Max(next, TimeSpan.FromMilliseconds(5));
    }

    private byte[] Request(IceCredentials remote, IPEndPoint? target, long now)
    {
        var id = StunTransactionId.NewRandom();
        var buffer = new byte[160];
        var writer = new StunMessageWriter(buffer, StunMessageType.BindingRequest, id);
        writer.AddUsername($"{remote.Ufrag}:{Local.Ufrag}");
        writer.AddPriority(Candidate.PriorityOf(CandidateKind.PeerReflexive, 65535));
        if (Controlling)
        {
            writer.AddIceControlling(_tieBreaker);
        }
        else
        {
            writer.AddIceControlled(_tieBreaker);
        }
        writer.AddMessageIntegrity(remote.Key);
        writer.AddFingerprint();
        _pending[id] = new Pending(target, now, remote.Key);
        _index[id] = this;
        return buffer[..writer.Length];
    }

    private void ForgetStalePending(long now)
    {
        if (_pending.Count == 0)
        {
            return;
        }
        foreach (var (id, pending) in _pending.Where(p => Stopwatch.GetElapsedTime(p.Value.Sent, now) > PendingLifetime).ToList())
        {
            _pending.Remove(id);
            _index.TryRemove(new(id, this));
        }
    }

    private void Wake()
    {
        if (_wake.CurrentCount == 0)
        {
            _wake.Release();
        }
    }

    private static double Smooth(double? srtt, double sample) => srtt is { } s ? (s * 7 + sample) / 8 : sample;

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    private sealed record Pending(IPEndPoint? Target, long Sent, byte[] Key);

    /// <summary>One remote address and what checking it found.</summary>
    private sealed class CheckTarget(Candidate candidate)
    {
        private int _burstSent;
        private long _burstStart;

        public Candidate Candidate { get; set; } = candidate;

        /// <summary>Transmissions left in the current search burst.</summary>
        public int Remaining { get; private set; }

        public int Transmissions { get; private set; }

        /// <summary>When the next check is due (a timestamp); 0 when none is planned.</summary>
        public long NextDue { get; private set; }

        public long LastAnswer { get; private set; }

        public long LastTriggered { get; set; }

        public double? SrttMs { get; private set; }

        /// <summary>The latest search burst ended without an answer.</summary>
        public bool BurstFailed { get; private set; }

        public bool IsAlive(long now) => LastAnswer != 0 && Stopwatch.GetElapsedTime(LastAnswer, now) < ConsentTimeout;

        public void StartBurst(long now, int transmissions)
        {
            Remaining = transmissions;
            _burstSent = 0;
            _burstStart = now;
            NextDue = now;
        }

        /// <summary>
        /// Called once <see cref="NextDue"/> has passed: whether a check goes now, and when the next one is due. A burst spaces its
        /// checks 100, 200, 400, 800, 1600… ms; after it, the controlling end keeps checking an address that ever answered (every
        /// <paramref name="keepInterval"/>, so a restored path is noticed) and retries one that never did with a short burst now
        /// and then; the controlled end goes quiet.
        /// </summary>
        public bool Due(long now, bool controlling, TimeSpan keepInterval, TimeSpan researchInterval)
        {
            if (Remaining > 0)
            {
                Remaining--;
                _burstSent++;
                Transmissions++;
                // After the last one, as long to answer as the one before it had.
                At(now, TimeSpan.FromMilliseconds(100 << Math.Min(_burstSent - 1, 4)));
                return true;
            }
            if (_burstSent > 0)
            {
                BurstFailed = LastAnswer < _burstStart;
                _burstSent = 0;
            }
            if (!controlling)
            {
                NextDue = 0;
                return false;
            }
            if (LastAnswer != 0)
            {
                Transmissions++;
                At(now, keepInterval);
                return true;
            }
            Remaining = 3;
            _burstStart = now + (long)(researchInterval.TotalSeconds * Stopwatch.Frequency);
            At(now, researchInterval);
            return false;
        }

        private void At(long now, TimeSpan wait) => NextDue = now + (long)(wait.TotalSeconds * Stopwatch.Frequency);

        public void Answered(long now, double rttMs)
        {
            LastAnswer = now;
            SrttMs = Smooth(SrttMs, rttMs);
            BurstFailed = false;
            // The search for this address is over; from here on it is kept (controlling) or left to the peer's checks.
            Remaining = 0;
            _burstSent = 0;
        }
    }
}

/// <summary>What checking one remote address has found.</summary>
/// <param name="Candidate">The address and how it was learned.</param>
/// <param name="Alive">It answered within <see cref="IceSession.ConsentTimeout"/>.</param>
/// <param name="SrttMs">Smoothed round trip of its checks.</param>
/// <param name="EverAnswered">It answered at least once.</param>
/// <param name="Transmissions">Checks sent to it so far.</param>
/// <param name="Failed">Its latest search burst ended with no answer.</param>
public sealed record TargetSnapshot(Candidate Candidate, bool Alive, double? SrttMs, bool EverAnswered, int Transmissions, bool Failed);

/// <summary>The state of one peer's checks: the direct addresses, and the relayed path's probe.</summary>
public sealed record IceSnapshot(bool HasRemote, IReadOnlyList<TargetSnapshot> Targets, bool RelayAlive, double? RelaySrttMs);
