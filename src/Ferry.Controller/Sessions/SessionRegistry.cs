using System.Collections.Concurrent;

namespace Ferry.Controller.Sessions;

/// <summary>
/// The sessions this replica holds, so a policy or relay change can be pushed to each without a restart; through the
/// <see cref="ReplicaBus"/>, changes and messages also reach the sessions other replicas hold.
/// </summary>
public sealed class SessionRegistry
{
    private readonly ReplicaBus _bus;
    private readonly string _replica;

    private readonly ConcurrentDictionary<string, Func<Task>> _policyListeners = new();
    private readonly ConcurrentDictionary<string, Func<Task>> _relayListeners = new();
    private readonly ConcurrentDictionary<string, Func<Task>> _connectorListeners = new();
    // Load reports come from every connector every few seconds; clients hear of them at most this often.
    private static readonly TimeSpan ConnectorsCoalesce = TimeSpan.FromMilliseconds(250);
    private int _connectorsPending;

    private readonly ConcurrentDictionary<string, Func<Core.ControlPlane.SessionMessage, Task>> _byIdentity = new();
    private readonly ConcurrentDictionary<string, Func<string, Task>> _closers = new();

    public SessionRegistry(ReplicaBus bus, ControllerOptions options)
    {
        _bus = bus;
        _replica = options.ReplicaId;
        bus.Received += notice => _ = ApplyAsync(notice);
        bus.Resynchronize += () =>
        {
            Fan(_policyListeners.Values);
            Fan(_relayListeners.Values);
            Fan(_connectorListeners.Values);
        };
    }

    /// <summary>Acts on another replica's notice for the sessions held here.</summary>
    private async Task ApplyAsync(ReplicaNotice notice)
    {
        switch (notice.Kind)
        {
            case ReplicaNoticeKind.Policy:
                Fan(_policyListeners.Values);
                break;
            case ReplicaNoticeKind.Relays:
                Fan(_relayListeners.Values);
                break;
            case ReplicaNoticeKind.Connectors:
                CoalesceConnectors();
                break;
            case ReplicaNoticeKind.Send when notice.Identity is { } identity && notice.Text is { } text
                && Core.ControlPlane.SessionMessage.Deserialize(System.Text.Encoding.UTF8.GetBytes(text)) is { } message:
                await SendHereAsync(identity, message);
                break;
            case ReplicaNoticeKind.Disconnect when notice.Identity is { } identity:
                await DisconnectHereAsync(identity, notice.Text ?? "ended by the controller");
                break;
        }
    }

    private void Publish(ReplicaNoticeKind kind, string? identity = null, string? text = null)
    {
        if (!_bus.IsShared)
        {
            return;
        }
        _ = Task.Run(async () =>
        {
            try
            {
                await _bus.PublishAsync(new ReplicaNotice(kind, _replica, identity, text), CancellationToken.None);
            }
            catch (Exception e) when (e is System.Data.Common.DbException or IOException or TimeoutException or InvalidOperationException)
            {
                // The database is unreachable: the other replicas cannot serve either, and resynchronize when it is back.
            }
        });
    }

    /// <summary>Lets other sessions send to this identity (a relay ticket for both ends of a pair).</summary>
    public void AddPeer(string identity, Func<Core.ControlPlane.SessionMessage, Task> send) => _byIdentity[identity] = send;

    public void RemovePeer(string identity, Func<Core.ControlPlane.SessionMessage, Task> send)
        => _byIdentity.TryRemove(new KeyValuePair<string, Func<Core.ControlPlane.SessionMessage, Task>>(identity, send));

    /// <summary>Lets an admin action end this identity's session (a removed device), with the reason the peer is told.</summary>
    public void AddCloser(string identity, Func<string, Task> close) => _closers[identity] = close;

    public void RemoveCloser(string identity, Func<string, Task> close)
        => _closers.TryRemove(new KeyValuePair<string, Func<string, Task>>(identity, close));

    /// <summary>Ends the session of <paramref name="identity"/>, whichever replica holds it.</summary>
    public async Task DisconnectAsync(string identity, string reason)
    {
        if (!await DisconnectHereAsync(identity, reason))
        {
            Publish(ReplicaNoticeKind.Disconnect, identity, reason);
        }
    }

    private async Task<bool> DisconnectHereAsync(string identity, string reason)
    {
        if (_closers.TryGetValue(identity, out var close))
        {
            try
            {
                await close(reason);
            }
            catch (Exception e) when (e is System.Net.WebSockets.WebSocketException or IOException or OperationCanceledException or ObjectDisposedException)
            {
                // Already ending.
            }
            return true;
        }
        return false;
    }

    /// <summary>
    /// Sends to the session of <paramref name="identity"/>: here if this replica holds it, else passed to the other replicas
    /// (true when passed on: delivery is then as sure as any message on the wire). False when no replica can hold it.
    /// </summary>
    public async Task<bool> TrySendAsync(string identity, Core.ControlPlane.SessionMessage message)
    {
        if (await SendHereAsync(identity, message))
        {
            return true;
        }
        if (!_bus.IsShared)
        {
            return false;
        }
        Publish(ReplicaNoticeKind.Send, identity, Core.ControlPlane.SessionMessage.Serialize(message));
        return true;
    }

    private async Task<bool> SendHereAsync(string identity, Core.ControlPlane.SessionMessage message)
    {
        if (!_byIdentity.TryGetValue(identity, out var send))
        {
            return false;
        }
        try
        {
            await send(message);
            return true;
        }
        catch (Exception e) when (e is System.Net.WebSockets.WebSocketException or IOException or OperationCanceledException or ObjectDisposedException)
        {
            return false;
        }
    }

    /// <summary>Registers a session that recomputes and pushes what it depends on (a client's grants, a connector's access table) on every policy change.</summary>
    public void AddPolicyListener(string sessionId, Func<Task> push) => _policyListeners[sessionId] = push;

    public void RemovePolicyListener(string sessionId) => _policyListeners.TryRemove(sessionId, out _);

    /// <summary>Registers a connector or client session that wants the relay list whenever it changes.</summary>
    public void AddRelayListener(string sessionId, Func<Task> pushRelays) => _relayListeners[sessionId] = pushRelays;

    public void RemoveRelayListener(string sessionId) => _relayListeners.TryRemove(sessionId, out _);

    /// <summary>Registers a client session that wants its networks' connector list (online, location, load) whenever it changes.</summary>
    public void AddConnectorListener(string sessionId, Func<Task> push) => _connectorListeners[sessionId] = push;

    public void RemoveConnectorListener(string sessionId) => _connectorListeners.TryRemove(sessionId, out _);

    /// <summary>Tells client sessions (on every replica) a connector's load changed; changes within a quarter second go out as one.</summary>
    public void NotifyConnectorsChanged()
    {
        CoalesceConnectors();
        Publish(ReplicaNoticeKind.Connectors);
    }

    private void CoalesceConnectors()
    {
        if (Interlocked.Exchange(ref _connectorsPending, 1) == 1)
        {
            return;
        }
        _ = Task.Run(async () =>
        {
            await Task.Delay(ConnectorsCoalesce);
            Interlocked.Exchange(ref _connectorsPending, 0);
            Fan(_connectorListeners.Values);
        });
    }

    /// <summary>Tells every policy listener, on every replica (clients' grants, connectors' access tables), to recompute; each sends only when its view changed.</summary>
    public void NotifyPolicyChanged()
    {
        Fan(_policyListeners.Values);
        Publish(ReplicaNoticeKind.Policy);
    }

    /// <summary>Tells every connector and client, on every replica, the relay list changed (a relay came, went or moved).</summary>
    public void NotifyRelaysChanged()
    {
        Fan(_relayListeners.Values);
        Publish(ReplicaNoticeKind.Relays);
    }

    private static void Fan(IEnumerable<Func<Task>> pushes)
    {
        foreach (var push in pushes)
        {
            _ = Task.Run(async () =>
            {
                try
                {
                    await push();
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    // A session that cannot be written to is ending; its own loop reports why.
                }
            });
        }
    }
}
