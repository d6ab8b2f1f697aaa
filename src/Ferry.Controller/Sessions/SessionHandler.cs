using System.Net.WebSockets;
using System.Text.Json;
using Ferry.Controller.CertificateAuthority;
using Ferry.Controller.Policy;
using Ferry.Controller.Storage;
using Ferry.Controller.Tokens;
using Ferry.Core.ControlPlane;
using Ferry.Core.Security;
using Ferry.Core.Tokens;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Sessions;

/// <summary>Serves /v1/session: the one long-lived WebSocket each connector, relay and client holds with the controller.</summary>
/// <remarks>
/// The controller probes every heartbeat interval with its own clock; the daemon answers with its clock, so each answer
/// both proves liveness and measures the offset (daemon time minus the midpoint of the probe's round trip).
/// </remarks>
public sealed class SessionHandler(
    ControllerStore store,
    TokenService tokens,
    DeploymentCertificateAuthority ca,
    PolicyEvaluator policy,
    SessionRegistry registry,
    RelayDirectory relays,
    TicketService tickets,
    ConnectorDirectory connectors,
    ReplicaBus replicas,
    MfaSessions mfa,
    Security.SecurityEvents security,
    ControllerOptions options,
    TimeProvider time,
    ILogger<SessionHandler> logger)
{
    private static readonly TimeSpan HelloTimeout = TimeSpan.FromSeconds(10);

    public async Task HandleAsync(HttpContext context)
    {
        if (!context.WebSockets.IsWebSocketRequest)
        {
            await Results.Problem(statusCode: 400, title: "WebSocket required", detail: "/v1/session carries a daemon's WebSocket session; connect with a WebSocket client").ExecuteAsync(context);
            return;
        }
        var header = context.Request.Headers.Authorization.ToString();
        var token = header.StartsWith("Bearer ", StringComparison.Ordinal) ? header["Bearer ".Length..].Trim() : "";
        var from = context.Connection.RemoteIpAddress is { } ip ? (ip.IsIPv4MappedToIPv6 ? ip.MapToIPv4() : ip).ToString() : "unknown";
        using var webSocket = await context.WebSockets.AcceptWebSocketAsync(new WebSocketAcceptContext { KeepAliveInterval = options.HeartbeatInterval });
        await using var socket = new SessionSocket(webSocket);
        var ct = context.RequestAborted;
        try
        {
            if (token.StartsWith(TokenFormat.DevicePrefix, StringComparison.Ordinal))
            {
                await RunClientAsync(socket, token, from, ct);
            }
            else
            {
                await RunDaemonAsync(socket, token, from, ct);
            }
        }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException or InvalidDataException)
        {
            // The transport went away; the session's own bookkeeping already ran in its finally blocks.
        }
    }

    private async Task RunDaemonAsync(SessionSocket socket, string token, string from, CancellationToken ct)
    {
        var (row, refusal) = await tokens.AuthenticateAccessAsync(token, ct);
        if (refusal is not null || row is null)
        {
            await RefuseAsync(socket, refusal!.Code, refusal.Message, from, ct);
            return;
        }
        var daemon = await store.GetDaemonAsync(row.OwnerId, ct);
        if (daemon is null)
        {
            await RefuseAsync(socket, "unknown-daemon", "this daemon was removed from the controller; provision it again", from, ct, row.OwnerId);
            return;
        }
        var identity = new PeerIdentity(daemon.Kind, daemon.Id);
        var sessionId = TokenFormat.NewId("ss_");
        var now = time.GetUtcNow();
        var holder = await store.TryClaimSessionAsync(daemon.Id, sessionId, options.ReplicaId, from, now.ToUnixTimeMilliseconds(), (now - (options.HeartbeatInterval * 3)).ToUnixTimeMilliseconds(), ct);
        if (holder?.SessionReplica is { } holderReplica && holderReplica != options.ReplicaId && replicas.IsShared && !await replicas.IsAliveAsync(holderReplica, ct))
        {
            // The session was held by a replica that died: its daemon is back through this one, and need not wait for the claim to go stale.
            Log.SessionTakenOver(logger, identity.ToString(), holderReplica);
            holder = await store.TryClaimSessionAsync(daemon.Id, sessionId, options.ReplicaId, from, now.ToUnixTimeMilliseconds(), long.MaxValue, ct);
        }
        if (holder is not null)
        {
            var message = $"{daemon.Kind} '{daemon.Name}' ({daemon.Id}) is already in use by another process {tokens.LiveSessionDescription(holder, now) ?? "right now"}; tokens are single-owner, so this process is refused and the running one keeps working";
            await store.AddEventAsync(daemon.Id, "token-in-use", message, now.ToUnixTimeMilliseconds(), CancellationToken.None);
            await RefuseAsync(socket, "in-use", message, from, ct, daemon.Id);
            return;
        }

        var reason = "session closed by the daemon";
        var online = false;
        Func<SessionMessage, Task>? sendToPeer = null;
        Func<string, Task>? close = null;
        try
        {
            var hello = await HandshakeAsync(socket, ct);
            if (hello is null)
            {
                reason = "no hello within the time limit";
                await RefuseAsync(socket, "protocol", "expected a hello answering the first probe", from, ct);
                return;
            }
            var offset = Offset(hello.ControllerTimeMs, hello.DaemonTimeMs);
            if (await RefuseForClockAsync(socket, daemon.Id, identity, hello.Hostname, offset, from, ct))
            {
                reason = "clock offset beyond tolerance";
                return;
            }
            await tokens.ConfirmAsync(row, ct);
            await store.MarkOnlineAsync(daemon.Id, sessionId, Truncate(hello.Hostname, 253), JsonSerializer.Serialize(hello.PrivateIps.Take(64).ToArray()), Truncate(hello.Version, 64), from, offset, time.GetUtcNow().ToUnixTimeMilliseconds(), ct);
            online = true;
            ControllerMetrics.SessionStarted(daemon.Kind);
            if (daemon.Kind == PeerIdentity.Connector)
            {
                registry.NotifyPolicyChanged();
            }
            Log.DaemonOnline(logger, identity.ToString(), daemon.Name, from, offset, hello.Hostname, hello.Version);
            await socket.SendAsync(new WelcomeMessage(sessionId, identity.ToString(), (int)options.HeartbeatInterval.TotalMilliseconds, offset), ct);
            if (hello.CsrPem is not null)
            {
                await IssueCertificateAsync(socket, identity, hello.CsrPem, ct);
            }
            var current = row;
            TokenRow? pending = null;
            string? lastEndpoints = null;
            if (daemon.Kind == PeerIdentity.Connector)
            {
                await PushRelaysAsync(socket, sessionId, ct);
                await PushAccessAsync(socket, sessionId, daemon.NetworkId!, ct);
            }
            sendToPeer = message => socket.SendAsync(message, ct);
            registry.AddPeer(identity.ToString(), sendToPeer);
            close = why => socket.CloseAsync(WebSocketCloseStatus.PolicyViolation, why, CancellationToken.None);
            registry.AddCloser(identity.ToString(), close);
            var requester = new TicketService.Requester(identity, null, null);
            ConnectorStatusMessage? lastStatus = null;
            reason = await RunLoopAsync(socket, identity, async (message, loopCt) =>
            {
                switch (message)
                {
                    case RelayStatusMessage status when daemon.Kind == PeerIdentity.Relay:
                        await store.UpdateStatusAsync(daemon.Id, JsonSerializer.Serialize(status, RelayDirectory.StatusJson), loopCt);
                        var endpoints = string.Join(',', status.TcpEndpoints) + "|" + string.Join(',', status.StunEndpoints);
                        if (endpoints != lastEndpoints)
                        {
                            lastEndpoints = endpoints;
                            registry.NotifyRelaysChanged();
                        }
                        break;
                    case TicketRequestMessage request when daemon.Kind == PeerIdentity.Connector:
                        await HandleTicketRequestAsync(socket, requester, request, loopCt);
                        break;
                    case CandidatesMessage candidates when daemon.Kind == PeerIdentity.Connector:
                        await ForwardSignalAsync(socket, requester, candidates, loopCt);
                        break;
                    case ConnectorStatusMessage status when daemon.Kind == PeerIdentity.Connector:
                        if (await connectors.ReportAsync(daemon, lastStatus, status, loopCt))
                        {
                            registry.NotifyConnectorsChanged();
                        }
                        lastStatus = status;
                        break;
                    case ActivityMessage activity when daemon.Kind == PeerIdentity.Connector:
                        await mfa.RecordActivityAsync(daemon.NetworkId!, activity.Devices ?? [], loopCt);
                        break;
                    case StunReportMessage report when daemon.Kind == PeerIdentity.Connector:
                        await store.UpdateStunAsync(daemon.Id, report.Status == "ok" ? "ok" : "failed", Truncate(report.MappedAddress ?? "", 64) is { Length: > 0 } m ? m : null,
                            JsonSerializer.Serialize(report.Relays.Take(32).ToArray()), report.Error is null ? null : Truncate(report.Error, 500), time.GetUtcNow().ToUnixTimeMilliseconds(), loopCt);
                        break;
                    case ProbeReplyMessage reply:
                        var replyOffset = Offset(reply.ControllerTimeMs, reply.DaemonTimeMs);
                        if (await RefuseForClockAsync(socket, daemon.Id, identity, hello.Hostname, replyOffset, from, loopCt))
                        {
                            return "clock offset beyond tolerance";
                        }
                        await store.TouchAsync(daemon.Id, sessionId, replyOffset, time.GetUtcNow().ToUnixTimeMilliseconds(), loopCt);
                        break;
                    case CertificateRequestMessage request:
                        await IssueCertificateAsync(socket, identity, request.CsrPem, loopCt);
                        break;
                    case RotateTokensMessage:
                        var issued = await tokens.RotateForSessionAsync(current, loopCt);
                        pending = issued.Row;
                        await socket.SendAsync(new TokensRotatedMessage(issued.AccessToken, issued.AccessExpiresAt, issued.RefreshToken), loopCt);
                        break;
                    case TokensSavedMessage saved when pending is not null && TokenFormat.Hash(saved.AccessToken) == pending.AccessHash:
                        await tokens.ConfirmAsync(pending, loopCt);
                        current = pending;
                        pending = null;
                        Log.TokensRotated(logger, identity.ToString());
                        break;
                }
                return null;
            }, ct);
        }
        finally
        {
            registry.RemoveRelayListener(sessionId);
            registry.RemovePolicyListener(sessionId);
            if (sendToPeer is not null)
            {
                registry.RemovePeer(identity.ToString(), sendToPeer);
            }
            if (close is not null)
            {
                registry.RemoveCloser(identity.ToString(), close);
            }
            await store.MarkOfflineAsync(daemon.Id, sessionId, reason, time.GetUtcNow().ToUnixTimeMilliseconds(), CancellationToken.None);
            if (online)
            {
                ControllerMetrics.SessionEnded(daemon.Kind);
                Log.DaemonOffline(logger, identity.ToString(), daemon.Name, reason);
                if (daemon.Kind == PeerIdentity.Relay)
                {
                    registry.NotifyRelaysChanged();
                }
                else
                {
                    registry.NotifyPolicyChanged();
                }
            }
        }
    }

    private async Task RunClientAsync(SessionSocket socket, string token, string from, CancellationToken ct)
    {
        var device = await store.FindDeviceByTokenAsync(TokenFormat.Hash(token), ct);
        if (device is null)
        {
            await RefuseAsync(socket, "unknown-token", "device token is not known: sign in again ('ferry client login')", from, ct);
            return;
        }
        if (device.TokenExpiresAt < time.GetUtcNow().ToUnixTimeMilliseconds())
        {
            await RefuseAsync(socket, "token-expired", "device session expired: sign in again", from, ct, device.Id);
            return;
        }
        var identity = new PeerIdentity(PeerIdentity.Device, device.Id);
        var hello = await HandshakeAsync(socket, ct);
        if (hello is null)
        {
            await RefuseAsync(socket, "protocol", "expected a hello answering the first probe", from, ct);
            return;
        }
        var offset = Offset(hello.ControllerTimeMs, hello.DaemonTimeMs);
        if (await RefuseForClockAsync(socket, device.Id, identity, hello.Hostname, offset, from, ct))
        {
            return;
        }
        var sessionId = TokenFormat.NewId("ss_");
        await store.StartDeviceSessionAsync(device.Id, sessionId, options.ReplicaId, time.GetUtcNow().ToUnixTimeMilliseconds(), ct);
        await socket.SendAsync(new WelcomeMessage(sessionId, identity.ToString(), (int)options.HeartbeatInterval.TotalMilliseconds, offset), ct);
        var owner = $"{device.OwnerKind}/{device.OwnerId}";
        if (hello.CsrPem is not null)
        {
            await IssueCertificateAsync(socket, identity, hello.CsrPem, ct, owner);
        }
        var pushResources = WhenChanged(socket, async () =>
        {
            var grants = await policy.GrantsForAsync(device.OwnerKind, device.OwnerId, device.Id, ct);
            return new ResourcesMessage(grants, await connectors.OnlineAsync(grants.Select(g => g.Network), ct));
        }, ct);
        await pushResources();
        registry.AddPolicyListener(sessionId, pushResources);
        registry.AddConnectorListener(sessionId, pushResources);
        await PushRelaysAsync(socket, sessionId, ct);
        Log.ClientOnline(logger, identity.ToString(), $"{device.OwnerKind} {device.OwnerId}", from);
        var reason = "session closed by the client";
        Func<SessionMessage, Task> sendToPeer = message => socket.SendAsync(message, ct);
        registry.AddPeer(identity.ToString(), sendToPeer);
        string? closedBy = null;
        Func<string, Task> close = why =>
        {
            closedBy = why;
            return socket.CloseAsync(WebSocketCloseStatus.PolicyViolation, why, CancellationToken.None);
        };
        registry.AddCloser(identity.ToString(), close);
        var requester = new TicketService.Requester(identity, device.OwnerKind, device.OwnerId);
        ControllerMetrics.SessionStarted(PeerIdentity.Device);
        try
        {
            reason = await RunLoopAsync(socket, identity, async (message, loopCt) =>
            {
                switch (message)
                {
                    case ProbeReplyMessage reply:
                        if (await RefuseForClockAsync(socket, device.Id, identity, hello.Hostname, Offset(reply.ControllerTimeMs, reply.DaemonTimeMs), from, loopCt))
                        {
                            return "clock offset beyond tolerance";
                        }
                        await store.TouchDeviceSessionAsync(device.Id, sessionId, time.GetUtcNow().ToUnixTimeMilliseconds(), null, loopCt);
                        break;
                    case CertificateRequestMessage request:
                        await IssueCertificateAsync(socket, identity, request.CsrPem, loopCt, owner);
                        break;
                    case TicketRequestMessage ticketRequest:
                        await HandleTicketRequestAsync(socket, requester, ticketRequest, loopCt);
                        break;
                    case CandidatesMessage candidates:
                        await ForwardSignalAsync(socket, requester, candidates, loopCt);
                        break;
                    case PathReportMessage report:
                        await store.TouchDeviceSessionAsync(device.Id, sessionId, time.GetUtcNow().ToUnixTimeMilliseconds(),
                            JsonSerializer.Serialize(report.Paths.Take(64).ToArray(), RelayDirectory.StatusJson), loopCt);
                        break;
                }
                return null;
            }, ct);
        }
        finally
        {
            registry.RemovePeer(identity.ToString(), sendToPeer);
            registry.RemoveCloser(identity.ToString(), close);
            await store.EndDeviceSessionAsync(device.Id, sessionId, CancellationToken.None);
            registry.RemovePolicyListener(sessionId);
            registry.RemoveConnectorListener(sessionId);
            registry.RemoveRelayListener(sessionId);
            ControllerMetrics.SessionEnded(PeerIdentity.Device);
            Log.ClientOffline(logger, identity.ToString(), closedBy ?? reason);
        }
    }

    /// <summary>
    /// Passes direct-path signaling between a device and a connector that policy lets talk, naming the sender as the peer;
    /// the sender hears why when it cannot be passed on.
    /// </summary>
    private async Task ForwardSignalAsync(SessionSocket socket, TicketService.Requester requester, CandidatesMessage message, CancellationToken ct)
    {
        var (pair, refusal) = await tickets.AuthorizePairAsync(requester, message.Peer, ct);
        if (pair is null)
        {
            ControllerMetrics.Signal(forwarded: false);
            Log.SignalRefused(logger, requester.Identity.ToString(), message.Peer, refusal!);
            await socket.SendAsync(new ErrorMessage("signaling-refused", refusal!, message.Peer), ct);
            return;
        }
        var forwarded = message with { Peer = requester.Identity.ToString(), Candidates = [.. (message.Candidates ?? []).Take(16)] };
        var sent = await registry.TrySendAsync(message.Peer, forwarded);
        ControllerMetrics.Signal(sent);
        if (!sent)
        {
            await socket.SendAsync(new ErrorMessage("signaling-refused", $"{message.Peer} has no session with this controller now", message.Peer), ct);
        }
    }

    /// <summary>Signs a relay ticket when policy lets the pair talk, and hands it to both ends (the other one if it is on this replica).</summary>
    private async Task HandleTicketRequestAsync(SessionSocket socket, TicketService.Requester requester, TicketRequestMessage request, CancellationToken ct)
    {
        var (ticket, refusal) = await tickets.IssueAsync(requester, request.Peer, ct);
        if (ticket is null)
        {
            ControllerMetrics.Ticket(issued: false);
            Log.TicketRefused(logger, requester.Identity.ToString(), request.Peer, refusal!);
            await socket.SendAsync(new ErrorMessage("ticket-refused", refusal!, request.Peer), ct);
            return;
        }
        await socket.SendAsync(new TicketIssuedMessage(request.Peer, ticket.Text, ticket.NotAfter), ct);
        await registry.TrySendAsync(request.Peer, new TicketIssuedMessage(requester.Identity.ToString(), ticket.Text, ticket.NotAfter));
        ControllerMetrics.Ticket(issued: true);
        Log.TicketIssued(logger, requester.Identity.ToString(), request.Peer, ticket.NotAfter);
    }

    /// <summary>Sends the connector its network's access table now, and again whenever policy changes (which is how revocation reaches live flows).</summary>
    private async Task PushAccessAsync(SessionSocket socket, string sessionId, string networkId, CancellationToken ct)
    {
        var push = WhenChanged(socket, async () => await policy.AccessForNetworkAsync(networkId, ct), ct);
        // Policy changes fan out to every registered session; a connector recomputes its network's table.
        registry.AddPolicyListener(sessionId, push);
        await push();
    }

    /// <summary>Sends the current relay list now and registers the session for every later change.</summary>
    private async Task PushRelaysAsync(SessionSocket socket, string sessionId, CancellationToken ct)
    {
        var push = WhenChanged(socket, async () => new RelaysMessage(await relays.OnlineAsync(ct)), ct);
        registry.AddRelayListener(sessionId, push);
        await push();
    }

    /// <summary>
    /// A push that recomputes what a session depends on and sends it only when it differs from what was sent last; pushes of
    /// one session run one at a time, so an older view never overtakes a newer one.
    /// </summary>
    private static Func<Task> WhenChanged(SessionSocket socket, Func<Task<SessionMessage>> compute, CancellationToken ct)
    {
        string? lastSent = null;
        var gate = new SemaphoreSlim(1, 1);
        return async () =>
        {
            await gate.WaitAsync(ct);
            try
            {
                var message = await compute();
                var text = SessionMessage.Serialize(message);
                if (text != lastSent)
                {
                    await socket.SendAsync(message, ct);
                    lastSent = text;
                }
            }
            finally
            {
                gate.Release();
            }
        };
    }

    /// <summary>Sends the first probe and waits for the hello that answers it.</summary>
    private async Task<HelloMessage?> HandshakeAsync(SessionSocket socket, CancellationToken ct)
    {
        await socket.SendAsync(new ProbeMessage(0, time.GetUtcNow().ToUnixTimeMilliseconds(), (int)options.HeartbeatInterval.TotalMilliseconds), ct);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(HelloTimeout);
        try
        {
            return await socket.ReceiveAsync(timeout.Token) as HelloMessage;
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return null;
        }
    }

    /// <summary>Probes every heartbeat interval and dispatches what the daemon sends until it leaves, goes silent for three intervals, or a handler ends the session.</summary>
    private async Task<string> RunLoopAsync(SessionSocket socket, PeerIdentity identity, Func<SessionMessage, CancellationToken, Task<string?>> handle, CancellationToken ct)
    {
        using var sessionCts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var lastHeard = time.GetTimestamp();
        string? endReason = null;
        var prober = Task.Run(async () =>
        {
            using var timer = new PeriodicTimer(options.HeartbeatInterval, time);
            var seq = 0L;
            while (await timer.WaitForNextTickAsync(sessionCts.Token))
            {
                if (time.GetElapsedTime(Interlocked.Read(ref lastHeard)) > options.HeartbeatInterval * 3)
                {
                    endReason = "missed three heartbeats";
                    await socket.CloseAsync(WebSocketCloseStatus.PolicyViolation, endReason, CancellationToken.None);
                    await sessionCts.CancelAsync();
                    return;
                }
                await socket.SendAsync(new ProbeMessage(++seq, time.GetUtcNow().ToUnixTimeMilliseconds(), (int)options.HeartbeatInterval.TotalMilliseconds), sessionCts.Token);
            }
        }, CancellationToken.None);
        try
        {
            while (true)
            {
                var message = await socket.ReceiveAsync(sessionCts.Token);
                if (message is null)
                {
                    return "session closed by the daemon";
                }
                Interlocked.Exchange(ref lastHeard, time.GetTimestamp());
                var stop = await handle(message, sessionCts.Token);
                if (stop is not null)
                {
                    return stop;
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or WebSocketException or IOException)
        {
            return endReason ?? (ct.IsCancellationRequested ? "controller shutting down" : "connection lost");
        }
        finally
        {
            await sessionCts.CancelAsync();
            try
            {
                await prober;
            }
            catch (Exception e) when (e is OperationCanceledException or WebSocketException or IOException)
            {
                // The prober only ends by cancellation or a dead socket, both of which the loop already reported.
            }
        }
    }

    private long Offset(long controllerSentMs, long daemonTimeMs)
    {
        var receivedMs = time.GetUtcNow().ToUnixTimeMilliseconds();
        return daemonTimeMs - ((controllerSentMs + receivedMs) / 2);
    }

    /// <summary>Applies the ±5 s rule (refuse) and the ±3 s rule (warn); true when the session was refused.</summary>
    private async Task<bool> RefuseForClockAsync(SessionSocket socket, string subjectId, PeerIdentity identity, string hostname, long offsetMs, string from, CancellationToken ct)
    {
        var now = time.GetUtcNow().ToUnixTimeMilliseconds();
        if (Math.Abs(offsetMs) > options.ClockTolerance.TotalMilliseconds)
        {
            var message = $"clock of host '{hostname}' is off by {offsetMs:+#;-#;0} ms from the controller, beyond the ±{options.ClockTolerance.TotalMilliseconds:0} ms tolerance; fix its clock (enable NTP) and the {identity.Kind} will be accepted";
            await store.AddEventAsync(subjectId, "clock-refused", message, now, CancellationToken.None);
            await RefuseAsync(socket, "clock-skew", message, from, ct, subjectId);
            return true;
        }
        if (Math.Abs(offsetMs) > options.ClockWarning.TotalMilliseconds)
        {
            Log.ClockWarning(logger, identity.ToString(), offsetMs);
        }
        return false;
    }

    private async Task IssueCertificateAsync(SessionSocket socket, PeerIdentity identity, string csrPem, CancellationToken ct, string? owner = null)
    {
        try
        {
            var (pem, notAfter) = ca.Issue(identity, csrPem, options.CertificateLifetime, honourRequestedNames: identity.Kind == PeerIdentity.Relay, owner);
            await socket.SendAsync(new CertificateIssuedMessage(pem, ca.CertificatePem, notAfter), ct);
            Log.CertificateIssued(logger, identity.ToString(), notAfter);
        }
        catch (ArgumentException e)
        {
            await socket.SendAsync(new ErrorMessage("bad-csr", e.Message), ct);
        }
    }

    private async Task RefuseAsync(SessionSocket socket, string code, string reason, string from, CancellationToken ct, string? subject = null)
    {
        Log.SessionRefused(logger, code, from, reason);
        ControllerMetrics.Refused(code, "session");
        if (Security.SecurityEvents.KindOfRefusal(code) is { } kind)
        {
            await security.RecordAsync(kind, subject ?? "unknown", $"session refused ({code}): {reason}", from, CancellationToken.None);
        }
        try
        {
            await socket.SendAsync(new RefusedMessage(code, reason), ct);
        }
        catch (Exception e) when (e is WebSocketException or IOException)
        {
            // The refused peer left before hearing why; the log line above has it.
        }
        await socket.CloseAsync(WebSocketCloseStatus.PolicyViolation, code, ct);
    }

    private static string Truncate(string value, int max) => value.Length <= max ? value : value[..max];
}
