using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Ferry.Core.Security;

namespace Ferry.Core.ControlPlane;

/// <summary>How one session with the controller ended.</summary>
public sealed record SessionOutcome(bool Refused, string Code, string Reason);

/// <summary>The daemon end of the controller session: answers probes with its clock, asks for certificates, and hands other messages to its owner.</summary>
/// <remarks>Each session goes to <see cref="ControllerEndpoints.Current"/>; one that cannot connect moves the endpoints on.</remarks>
public sealed class ControllerSessionClient(ControllerEndpoints controllers, ControllerTrust trust, TimeProvider clock)
{
    /// <summary>The daemon's key pair; certificates are issued over its public half and renewed over the session.</summary>
    public ECDsa Key { get; } = ECDsa.Create(ECCurve.NamedCurves.nistP256);

    public X509Certificate2? Certificate { get; private set; }

    /// <summary>DNS names or IPs to ask for in the certificate (a relay's advertised addresses); the controller honours them for relays only.</summary>
    public IReadOnlyList<string> CertificateNames { get; set; } = [];
    public string? CaPem { get; private set; }
    public string? Identity { get; private set; }
    public long? TimeOffsetMs { get; private set; }

    /// <summary>Called for every message the session does not handle itself (resources, rotated tokens, …).</summary>
    public Func<SessionMessage, SessionSocket, CancellationToken, Task>? OnMessage { get; set; }

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, TaskCompletionSource<TicketIssuedMessage>> _ticketWaiters = new();
    private SessionSocket? _current;

    /// <summary>Asks the controller for a relay ticket for this identity and <paramref name="peer"/>; fails with the controller's reason when refused.</summary>
    public async Task<TicketIssuedMessage> RequestTicketAsync(string peer, CancellationToken ct)
    {
        var socket = _current ?? throw new InvalidOperationException("no session with the controller right now");
        var waiter = _ticketWaiters.GetOrAdd(peer, _ => new TaskCompletionSource<TicketIssuedMessage>(TaskCreationOptions.RunContinuationsAsynchronously));
        await socket.SendAsync(new TicketRequestMessage(peer), ct);
        try
        {
            return await waiter.Task.WaitAsync(TimeSpan.FromSeconds(15), ct);
        }
        finally
        {
            _ticketWaiters.TryRemove(new KeyValuePair<string, TaskCompletionSource<TicketIssuedMessage>>(peer, waiter));
        }
    }

    /// <summary>Sends a message on the current session (signaling, reports); fails when there is none right now.</summary>
    public Task SendAsync(SessionMessage message, CancellationToken ct)
    {
        var socket = _current ?? throw new InvalidOperationException("no session with the controller right now");
        return socket.SendAsync(message, ct);
    }

    /// <summary>Called once the controller accepted the session.</summary>
    public Func<WelcomeMessage, SessionSocket, CancellationToken, Task>? OnWelcome { get; set; }

    /// <summary>Holds one session until it ends; throws only when <paramref name="ct"/> is cancelled.</summary>
    public async Task<SessionOutcome> RunAsync(string bearer, CancellationToken ct)
    {
        using var webSocket = new ClientWebSocket();
        webSocket.Options.SetRequestHeader("Authorization", "Bearer " + bearer);
        webSocket.Options.KeepAliveInterval = TimeSpan.FromSeconds(15);
        using var invoker = new HttpMessageInvoker(trust.CreateHandler());
        var controller = controllers.Current;
        var sessionUri = new UriBuilder(controller) { Scheme = controller.Scheme == "http" ? "ws" : "wss", Path = "/v1/session" }.Uri;
        try
        {
            using var connectTimeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            connectTimeout.CancelAfter(TimeSpan.FromSeconds(15));
            await webSocket.ConnectAsync(sessionUri, invoker, connectTimeout.Token);
        }
        catch (Exception e) when (!ct.IsCancellationRequested && e is WebSocketException or HttpRequestException or OperationCanceledException or IOException)
        {
            controllers.MoveNext(controller);
            return new SessionOutcome(false, "unreachable", $"cannot reach the controller at {controller}: {Describe(e)}");
        }
        await using var socket = new SessionSocket(webSocket);
        var certificateRenewal = TimeSpan.MaxValue;
        _current = socket;
        try
        {
            while (true)
            {
                using var silence = CancellationTokenSource.CreateLinkedTokenSource(ct);
                // Probes come every heartbeat interval; three missing means the controller or the path is gone.
                silence.CancelAfter(TimeSpan.FromSeconds(20));
                var message = await socket.ReceiveAsync(silence.Token);
                switch (message)
                {
                    case null:
                        return new SessionOutcome(false, "closed", $"controller closed the session ({webSocket.CloseStatusDescription ?? "no reason"})");
                    case ProbeMessage probe when probe.Seq == 0:
                        await socket.SendAsync(new HelloMessage(HostFacts.Hostname, HostFacts.PrivateIps(), HostFacts.Version, probe.Seq, probe.ControllerTimeMs,
                            clock.GetUtcNow().ToUnixTimeMilliseconds(), CreateCsrPem()), ct);
                        break;
                    case ProbeMessage probe:
                        await socket.SendAsync(new ProbeReplyMessage(probe.Seq, probe.ControllerTimeMs, clock.GetUtcNow().ToUnixTimeMilliseconds()), ct);
                        if (Certificate is not null && clock.GetUtcNow() > Certificate.NotAfter.ToUniversalTime() - certificateRenewal)
                        {
                            certificateRenewal = TimeSpan.MaxValue;
                            await socket.SendAsync(new CertificateRequestMessage(CreateCsrPem()), ct);
                        }
                        break;
                    case WelcomeMessage welcome:
                        Identity = welcome.Identity;
                        TimeOffsetMs = welcome.TimeOffsetMs;
                        if (OnWelcome is not null)
                        {
                            await OnWelcome(welcome, socket, ct);
                        }
                        break;
                    case RefusedMessage refused:
                        return new SessionOutcome(true, refused.Code, refused.Reason);
                    case CertificateIssuedMessage issued:
                        var previous = Certificate;
                        Certificate = X509Certificate2.CreateFromPem(issued.CertificatePem).CopyWithPrivateKey(Key);
                        previous?.Dispose();
                        CaPem = issued.CaPem;
                        // Renew once a third of the lifetime is left, so an outage shorter than that costs nothing.
                        certificateRenewal = (Certificate.NotAfter.ToUniversalTime() - clock.GetUtcNow().UtcDateTime) / 3;
                        if (OnMessage is not null)
                        {
                            await OnMessage(issued, socket, ct);
                        }
                        break;
                    case TicketIssuedMessage ticket when _ticketWaiters.TryGetValue(ticket.Peer, out var waiter):
                        waiter.TrySetResult(ticket);
                        break;
                    case ErrorMessage { Code: "ticket-refused", Subject: { } peer } refusal when _ticketWaiters.TryGetValue(peer, out var refused):
                        refused.TrySetException(new InvalidOperationException(refusal.Message));
                        break;
                    default:
                        if (OnMessage is not null)
                        {
                            await OnMessage(message, socket, ct);
                        }
                        break;
                }
            }
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return new SessionOutcome(false, "silent", "controller stopped answering (no probe for 20 s)");
        }
        catch (Exception e) when (!ct.IsCancellationRequested && e is WebSocketException or IOException or InvalidDataException)
        {
            return new SessionOutcome(false, "lost", $"session lost: {Describe(e)}");
        }
        finally
        {
            _current = null;
        }
    }

    private string CreateCsrPem()
    {
        var request = new CertificateRequest("CN=ferry", Key, HashAlgorithmName.SHA256);
        if (CertificateNames.Count > 0)
        {
            var san = new SubjectAlternativeNameBuilder();
            foreach (var name in CertificateNames)
            {
                if (System.Net.IPAddress.TryParse(name, out var ip))
                {
                    san.AddIpAddress(ip);
                }
                else
                {
                    san.AddDnsName(name);
                }
            }
            request.CertificateExtensions.Add(san.Build());
        }
        return request.CreateSigningRequestPem();
    }

    private static string Describe(Exception e) => e.InnerException is { } inner ? $"{e.Message} ({inner.Message})" : e.Message;
}
