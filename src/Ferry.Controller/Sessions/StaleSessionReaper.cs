using Ferry.Controller.Storage;
using Ferry.Core.Security;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Sessions;

/// <summary>
/// Marks offline the daemons whose replica died holding their session, and pushes the change to the sessions here:
/// nobody else is left to do it, and until then clients would be routed to connectors nobody serves.
/// </summary>
public sealed class StaleSessionReaper(ControllerStore store, SessionRegistry registry, ReplicaBus replicas, ControllerOptions options, TimeProvider time, ILogger<StaleSessionReaper> logger)
    : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (!replicas.IsShared)
        {
            return;
        }
        using var timer = new PeriodicTimer(options.HeartbeatInterval, time);
        while (await timer.WaitForNextTickAsync(stoppingToken))
        {
            try
            {
                await ReapAsync(stoppingToken);
            }
            catch (Exception e) when (e is System.Data.Common.DbException or IOException or TimeoutException)
            {
                // The database is away; the next tick tries again.
            }
        }
    }

    /// <summary>One pass: stale sessions of other replicas become offline; true when any did.</summary>
    public async Task<bool> ReapAsync(CancellationToken ct)
    {
        var now = time.GetUtcNow();
        var stale = await store.ListStaleSessionsAsync(options.ReplicaId, (now - (options.HeartbeatInterval * 3)).ToUnixTimeMilliseconds(), ct);
        var relays = false;
        var others = false;
        foreach (var daemon in stale)
        {
            var replica = daemon.SessionReplica ?? "?";
            await store.MarkOfflineAsync(daemon.Id, daemon.SessionId!, $"controller replica {replica} stopped answering", now.ToUnixTimeMilliseconds(), ct);
            Log.SessionReaped(logger, new PeerIdentity(daemon.Kind, daemon.Id).ToString(), daemon.Name, replica);
            relays |= daemon.Kind == PeerIdentity.Relay;
            others |= daemon.Kind != PeerIdentity.Relay;
        }
        if (relays)
        {
            registry.NotifyRelaysChanged();
        }
        if (others)
        {
            registry.NotifyPolicyChanged();
        }
        return stale.Count > 0;
    }
}
