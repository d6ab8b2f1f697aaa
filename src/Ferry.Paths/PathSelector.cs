using System.Diagnostics;
using System.Globalization;
using System.Net;
using Ferry.Core.ControlPlane;
using Ferry.Paths.Ice;
using Ferry.Quic;
using Microsoft.Extensions.Logging;

namespace Ferry.Paths;

/// <summary>
/// Chooses, for one client→connector QUIC connection, which path carries its traffic. The connection starts on the relayed
/// path; when a direct address answers checks and is the quicker, the connection migrates to it (QUIC path validation, no data
/// lost); both paths keep being measured, and the one with the lower round trip carries traffic; when the direct address stops
/// answering, the connection moves back to the relay at once. Only the client migrates; the connector's QUIC follows.
/// </summary>
public sealed partial class PathSelector : IAsyncDisposable
{
    private static readonly TimeSpan Tick = TimeSpan.FromMilliseconds(250);
    private static readonly TimeSpan MigrationWait = TimeSpan.FromSeconds(4);
    private static readonly TimeSpan RetryAfterFailedMigration = TimeSpan.FromSeconds(2);
    // Two ticks in a row before going direct (one lucky sample is not a path); eight before leaving a working direct path for the relay.
    private const int TicksToDirect = 2;
    private const int TicksToRelay = 8;

    private readonly string _connector;
    private readonly QuicConnection _connection;
    private readonly RelayQuicPath _relayPath;
    private readonly IceSession _ice;
    private readonly IceAgent _agent;
    private readonly QuicEndpoint _quic;
    private readonly Func<string?> _relayName;
    private readonly Func<string?> _localFailure;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private readonly Dictionary<IPEndPoint, long> _migrationFailedAt = [];
    private readonly long _firstFlow;
    private int _betterTicks;
    private volatile string? _lastFailure;
    private double? _directAfterMs;
    private int _migrations;

    internal PathSelector(string connector, QuicConnection connection, RelayQuicPath relayPath, IceSession ice, IceAgent agent, QuicEndpoint quic,
        Func<string?> relayName, Func<string?> localFailure, long firstFlow, ILogger logger)
    {
        _firstFlow = firstFlow;
        _connector = connector;
        _connection = connection;
        _relayPath = relayPath;
        _ice = ice;
        _agent = agent;
        _quic = quic;
        _relayName = relayName;
        _localFailure = localFailure;
        _logger = logger;
        _loop = Task.Run(RunAsync);
    }

    /// <summary>The connector this connection goes to.</summary>
    public string Connector => _connector;

    /// <summary>Whether traffic goes over a direct UDP path now.</summary>
    public bool IsDirect => !OnRelay;

    private bool OnRelay => _connection.RemoteEndPoint.Equals(_relayPath.RemoteEndPoint);

    /// <summary>The path as <c>ferry client status</c> and the controller show it.</summary>
    public PathStatus Status()
    {
        var snapshot = _ice.Snapshot();
        QuicConnectionStatistics? stats = null;
        try
        {
            stats = _connection.GetStatistics();
        }
        catch (Exception e) when (e is QuicException or ObjectDisposedException)
        {
            // Closed: report what is known.
        }
        bool direct = !OnRelay;
        var best = BestDirect(snapshot);
        var active = direct ? snapshot.Targets.FirstOrDefault(t => t.Candidate.EndPoint.Equals(_connection.RemoteEndPoint)) : null;
        return new PathStatus(
            _connector,
            direct ? "direct" : "relayed",
            direct ? _connection.LocalEndPoint.ToString() : null,
            direct ? _connection.RemoteEndPoint.ToString() : _relayName(),
            stats is { } s && s.SmoothedRtt > TimeSpan.Zero ? Math.Round(s.SmoothedRtt.TotalMilliseconds, 3) : null,
            Round((active ?? best)?.SrttMs),
            Round(snapshot.RelaySrttMs),
            stats?.BytesSent ?? 0,
            stats?.BytesReceived ?? 0,
            direct ? null : WhyNotDirect(snapshot),
            _directAfterMs,
            _migrations);
    }

    private static double? Round(double? value) => value is { } v ? Math.Round(v, 3) : null;

    private async Task RunAsync()
    {
        var ct = _stop.Token;
        using var timer = new PeriodicTimer(Tick);
        try
        {
            while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false) && !_connection.Closed.IsCompleted)
            {
                await DecideAsync(ct).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception e) when (e is QuicException or ObjectDisposedException)
        {
            // The connection ended; the flow opener makes a new one (and a new selector) when the next flow needs it.
        }
        finally
        {
            _agent.Stop(_ice);
        }
    }

    private async Task DecideAsync(CancellationToken ct)
    {
        var snapshot = _ice.Snapshot();
        var best = BestDirect(snapshot);
        if (OnRelay)
        {
            _ice.Active = null;
            // Direct wins unless the relay is clearly quicker: a direct path spares the relays and survives their loss.
            if (best is not null && (snapshot.RelaySrttMs is not { } relay || best.SrttMs <= relay + Margin(relay)))
            {
                if (++_betterTicks >= TicksToDirect)
                {
                    _betterTicks = 0;
                    await MigrateToDirectAsync(best, snapshot.RelaySrttMs, ct).ConfigureAwait(false);
                }
            }
            else
            {
                _betterTicks = 0;
            }
            return;
        }

        var remote = _connection.RemoteEndPoint;
        _ice.Active = remote;
        var active = snapshot.Targets.FirstOrDefault(t => t.Candidate.EndPoint.Equals(remote));
        if (active is not { Alive: true })
        {
            _betterTicks = 0;
            if (best is not null)
            {
                await MigrateToDirectAsync(best, snapshot.RelaySrttMs, ct).ConfigureAwait(false);
                return;
            }
            var why = active is null ? "the direct address is no longer a candidate" : $"{remote} stopped answering checks for {IceSession.ConsentTimeout.TotalSeconds:0.#} s";
            await MigrateToRelayAsync(why, immediate: true, ct).ConfigureAwait(false);
            return;
        }
        if (snapshot.RelayAlive && snapshot.RelaySrttMs is { } relayRtt && active.SrttMs is { } directRtt && relayRtt + Margin(relayRtt) < directRtt)
        {
            if (++_betterTicks >= TicksToRelay)
            {
                _betterTicks = 0;
                await MigrateToRelayAsync(string.Create(CultureInfo.InvariantCulture, $"the relayed path is quicker: {relayRtt:0.###} ms against {directRtt:0.###} ms direct"), immediate: false, ct).ConfigureAwait(false);
            }
            return;
        }
        _betterTicks = 0;
        if (best is not null && !best.Candidate.EndPoint.Equals(remote) && best.SrttMs * 1.5 + 1 < active.SrttMs)
        {
            await MigrateToDirectAsync(best, snapshot.RelaySrttMs, ct).ConfigureAwait(false);
        }
    }

    private static double Margin(double relayRttMs) => Math.Max(2, relayRttMs * 0.1);

    /// <summary>The working direct address with the lowest round trip (higher ICE priority on a tie); one that just failed to migrate waits.</summary>
    private TargetSnapshot? BestDirect(IceSnapshot snapshot)
    {
        long now = Stopwatch.GetTimestamp();
        lock (_migrationFailedAt)
        {
            return snapshot.Targets
                .Where(t => t.Alive && t.SrttMs is not null)
                .Where(t => !_migrationFailedAt.TryGetValue(t.Candidate.EndPoint, out var at) || Stopwatch.GetElapsedTime(at, now) > RetryAfterFailedMigration)
                .OrderBy(t => t.SrttMs)
                .ThenByDescending(t => t.Candidate.Priority)
                .FirstOrDefault();
        }
    }

    private async Task MigrateToDirectAsync(TargetSnapshot target, double? relayRtt, CancellationToken ct)
    {
        var endPoint = target.Candidate.EndPoint;
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
        wait.CancelAfter(MigrationWait);
        try
        {
            await _connection.MigrateAsync(_quic.CreatePath(endPoint), immediate: false, wait.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is QuicException or OperationCanceledException && !ct.IsCancellationRequested)
        {
            lock (_migrationFailedAt)
            {
                _migrationFailedAt[endPoint] = Stopwatch.GetTimestamp();
            }
            _lastFailure = $"moving to {target.Candidate} failed: {e.Message}";
            LogMigrationFailed(_logger, _connector, target.Candidate.ToString(), e.Message);
            return;
        }
        _migrations++;
        _lastFailure = null;
        _ice.Active = endPoint;
        var elapsed = Stopwatch.GetElapsedTime(_firstFlow).TotalMilliseconds;
        _directAfterMs ??= Math.Round(elapsed, 1);
        LogDirect(_logger, _connector, _connection.LocalEndPoint.ToString(), endPoint.ToString(), Ms(target.SrttMs), Ms(relayRtt), Math.Round(elapsed));
    }

    private async Task MigrateToRelayAsync(string reason, bool immediate, CancellationToken ct)
    {
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
        wait.CancelAfter(MigrationWait);
        try
        {
            await _connection.MigrateAsync(_relayPath, immediate, wait.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is QuicException or OperationCanceledException && !ct.IsCancellationRequested)
        {
            LogMigrationFailed(_logger, _connector, "the relayed path", e.Message);
            return;
        }
        _migrations++;
        _ice.Active = null;
        _lastFailure = reason;
        LogRelayed(_logger, _connector, reason);
    }

    private static string Ms(double? ms) => ms is { } v ? v.ToString("0.###", CultureInfo.InvariantCulture) : "?";

    /// <summary>Why traffic is not on a direct path, in words that say what to look at.</summary>
    private string? WhyNotDirect(IceSnapshot snapshot)
    {
        if (_agent.SignalingFailure(_connector) is { } signaling)
        {
            return signaling;
        }
        if (!snapshot.HasRemote)
        {
            return null; // Still waiting for the connector's candidates.
        }
        if (snapshot.Targets.Any(t => t.Alive))
        {
            return _lastFailure; // A direct address works; the relay is quicker now, or the move is under way.
        }
        if (snapshot.Targets.Count == 0)
        {
            return AddLocal("the connector offered no candidate addresses");
        }
        if (snapshot.Targets.All(t => t.Failed || t.EverAnswered))
        {
            var lost = snapshot.Targets.Where(t => t.EverAnswered).Select(t => t.Candidate.EndPoint.ToString()).ToList();
            if (lost.Count > 0)
            {
                return AddLocal($"{string.Join(", ", lost)} stopped answering checks");
            }
            var kinds = string.Join(", ", snapshot.Targets.Select(t => t.Candidate.ToString()));
            return AddLocal($"no connectivity check was answered by any of the connector's {snapshot.Targets.Count} candidate addresses ({kinds})");
        }
        return null; // Still searching.
    }

    private string AddLocal(string reason) => _localFailure() is { } local ? $"{reason}; {local}" : reason;

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _loop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _stop.Dispose();
    }

    [LoggerMessage(530, LogLevel.Information, "Path to {Connector}: direct {Local} -> {Remote}, rtt {RttMs} ms (relayed {RelayedMs} ms), {ElapsedMs} ms after the first flow")]
    private static partial void LogDirect(ILogger logger, string connector, string local, string remote, string rttMs, string relayedMs, double elapsedMs);

    [LoggerMessage(531, LogLevel.Information, "Path to {Connector}: relayed ({Reason})")]
    private static partial void LogRelayed(ILogger logger, string connector, string reason);

    [LoggerMessage(532, LogLevel.Warning, "Path to {Connector}: could not move to {Target}: {Reason}")]
    private static partial void LogMigrationFailed(ILogger logger, string connector, string target, string reason);
}
