using System.Net.Http.Json;
using System.Runtime.CompilerServices;
using Ferry.Core.Api;
using Ferry.Core.ControlPlane;
using Ferry.Client.Access;
using Ferry.Paths;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Ferry.Client;

/// <summary>Sign-in was refused: wrong password, unknown key. Retrying will not help.</summary>
public sealed class SignInRefusedException(string message) : Exception(message);

/// <summary>Asks the running client for one more port forward: "LOCALPORT=HOST:PORT".</summary>
public sealed record ForwardRequest(string Spec);

/// <summary>Where a forward added at run time listens.</summary>
public sealed record ForwardAdded(string Listening);

/// <summary>Body of POST /mfa on the control socket: a code from the user's authenticator app, passed on to the controller.</summary>
public sealed record MfaRequest(string Code);

/// <summary>What the running client reports on its control socket.</summary>
public sealed record ClientStatus(string Controller, string? Identity, bool Connected, long? TimeOffsetMs, string? CertificateSubject, string? CertificateIssuer, DateTimeOffset? CertificateNotAfter, ResourceGrant[] Resources, RelayInfo[] Relays, StunReportMessage? Stun, string[] Listeners, string[] ConnectedTo, PathStatus[] Paths, Routing.NetworkRoute[] Routes, string? Location, DateTimeOffset? ConnectedSince = null, string? LastError = null, DateTimeOffset? LastErrorAt = null);

/// <summary>The client process: signs in, holds a controller session for its device certificate and grants, and answers local questions.</summary>
public sealed class ClientDaemon(ClientOptions options, ILoggerFactory loggers)
{
    private readonly ILogger _logger = loggers.CreateLogger<ClientDaemon>();
    private volatile ResourceGrant[] _resources = [];
    private ControllerSessionClient? _session;
    private volatile bool _connected;
    // Written by the session loop, read by status and readiness on other threads: references, so no read is torn.
    private volatile StrongBox<DateTimeOffset>? _connectedSinceBox;
    private volatile Tuple<string, DateTimeOffset>? _lastErrorBox;

    private DateTimeOffset? SessionSince
    {
        get => _connectedSinceBox?.Value;
        set => _connectedSinceBox = value is { } v ? new StrongBox<DateTimeOffset>(v) : null;
    }

    private (string Error, DateTimeOffset At)? SessionError
    {
        get => _lastErrorBox is { } e ? (e.Item1, e.Item2) : null;
        set => _lastErrorBox = value is { } v ? Tuple.Create(v.Error, v.At) : null;
    }
    private volatile RelayInfo[] _relays = [];
    private volatile DataPlaneEndpoint? _dataPlane;
    // Flows that start before the device certificate arrives wait on this rather than fail.
    private readonly TaskCompletionSource<DataPlaneEndpoint> _dataPlaneReady = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource<QuicFlowOpener> _firstOpener = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Opens flows to connectors; the local access servers (SOCKS5, HTTP CONNECT, forwards) use it.</summary>
    public QuicFlowOpener? Opener { get; private set; }

    /// <summary>Which resource a destination belongs to, updated with every grant change.</summary>
    public ClientRoutes Routes { get; } = new();

    public ResourceGrant[] Resources => _resources;

    public async Task RunAsync(CancellationToken ct)
    {
        await using var control = await StartControlSocketAsync(ct);
        ClientMetrics.ObservePaths(() => Opener?.Paths ?? []);
        await using var ops = options.MetricsListen is null ? null
            : await Core.Operations.OpsServer.StartAsync(options.MetricsListen, [ClientMetrics.MeterName], new Core.Operations.DelegateReadiness(NotReadyBecause), _logger, ct);
        Routes.SplitTunnel = options.SplitTunnel;
        using var stopReports = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var reports = Task.Run(() => ReportPathsAsync(stopReports.Token), CancellationToken.None);
        try
        {
            await StartListenersAsync(ct);
            await RunSessionsAsync(ct);
        }
        finally
        {
            ILoopbackListener[] listeners;
            lock (_listeners)
            {
                listeners = [.. _listeners];
            }
            foreach (var listener in listeners)
            {
                await listener.DisposeAsync();
            }
            if (Opener is not null)
            {
                await Opener.DisposeAsync();
            }
            if (_dataPlane is not null)
            {
                await _dataPlane.DisposeAsync();
            }
            await stopReports.CancelAsync();
            await reports.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
    }

    /// <summary>Direct-path offers go out on whichever controller session is current.</summary>
    private Task SignalAsync(CandidatesMessage message, CancellationToken ct)
        => _session is { } session ? session.SendAsync(message, ct) : throw new InvalidOperationException("no session with the controller right now");

    /// <summary>Tells the controller which path each connection uses (for operators): at once when a path changes kind, else every 30 s.</summary>
    private async Task ReportPathsAsync(CancellationToken ct)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(2));
        string? lastShape = null;
        var lastSent = DateTimeOffset.MinValue;
        try
        {
            while (await timer.WaitForNextTickAsync(ct))
            {
                if (_session is not { } session || !_connected || Opener is not { } opener)
                {
                    lastShape = null;
                    continue;
                }
                var paths = opener.Paths;
                var shape = string.Join(";", paths.Select(p => $"{p.Connector} {p.Kind} {p.Remote} {p.DirectFailure}"));
                if (shape == lastShape && DateTimeOffset.UtcNow - lastSent < TimeSpan.FromSeconds(30))
                {
                    continue;
                }
                try
                {
                    await session.SendAsync(new PathReportMessage([.. paths]), ct);
                    lastShape = shape;
                    lastSent = DateTimeOffset.UtcNow;
                }
                catch (Exception e) when (e is InvalidOperationException or System.Net.WebSockets.WebSocketException or IOException or ObjectDisposedException)
                {
                    // Between sessions: the next one gets the report.
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private async Task RunSessionsAsync(CancellationToken ct)
    {
        using var http = new HttpClient(options.Trust.CreateHandler()) { Timeout = TimeSpan.FromSeconds(15) };
        var backoff = TimeSpan.FromSeconds(1);
        ClientLoginResult? login = null;
        ClientLoginResult? openerLogin = null;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                login ??= await SignInAsync(http, ct);
                _deviceToken = login.DeviceToken;
            }
            catch (HttpRequestException e)
            {
                var unreachable = options.Controller.Current;
                options.Controller.MoveNext(unreachable);
                SessionError = ($"unreachable: cannot reach the controller at {unreachable}: {e.Message}", DateTimeOffset.UtcNow);
                Log.SessionEnded(_logger, "unreachable", $"cannot reach the controller at {unreachable}: {e.Message}", backoff);
                await DelayAsync(backoff, ct);
                backoff = Next(backoff);
                continue;
            }
            SetResources(login.Resources);
            _session = new ControllerSessionClient(options.Controller, options.Trust, TimeProvider.System);
            var session = _session;
            if (!ReferenceEquals(login, openerLogin))
            {
                if (Opener is not null)
                {
                    // A new sign-in means a new device identity: connections made as the old one are closed, not leaked.
                    await Opener.DisposeAsync();
                }
                // A reconnect to the controller keeps the opener: live flows must not notice the control plane coming and going.
                Opener = new QuicFlowOpener(() => _session, ct => _dataPlaneReady.Task.WaitAsync(ct), new Routing.ConnectorSelector(login.Identity, options.Location, TimeProvider.System), _logger);
                openerLogin = login;
                _firstOpener.TrySetResult(Opener);
            }
            _session.OnWelcome = (_, _, _) =>
            {
                _connected = true;
                SessionSince = DateTimeOffset.UtcNow;
                backoff = TimeSpan.FromSeconds(1);
                return Task.CompletedTask;
            };
            _session.OnMessage = (message, _, _) =>
            {
                switch (message)
                {
                    case ResourcesMessage resources:
                        SetResources(resources.Resources);
                        Opener?.UpdateConnectors(resources.Connectors ?? []);
                        break;
                    case CandidatesMessage candidates when _dataPlane is { } plane:
                        _ = plane.HandleSignalAsync(candidates, SignalAsync, ct);
                        break;
                    case ErrorMessage { Code: "signaling-refused", Subject: { } peer } refused when _dataPlane is { } plane:
                        plane.SignalingRefused(peer, refused.Message);
                        break;
                    case CertificateIssuedMessage issued when _dataPlane is null:
                        // The data plane needs the device certificate: it starts with the first one.
                        _dataPlane = DataPlaneEndpoint.Create(new System.Net.IPEndPoint(System.Net.IPAddress.Any, 0), session.Certificate!,
                            System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(issued.CaPem), acceptConnections: false, _logger);
                        _dataPlane.Signal = SignalAsync;
                        _dataPlane.DirectPaths = options.DirectPaths;
                        _dataPlaneReady.TrySetResult(_dataPlane);
                        ApplyRelays(ct);
                        break;
                    case CertificateIssuedMessage when _dataPlane is { } renewed:
                        _ = renewed.UpdateCertificateAsync(session.Certificate!, _relays, ct);
                        break;
                    case RelaysMessage { Relays.Length: > 0 } relays:
                        _relays = relays.Relays;
                        ApplyRelays(ct);
                        break;
                }
                return Task.CompletedTask;
            };
            var outcome = await _session.RunAsync(login.DeviceToken, ct);
            _connected = false;
            SessionSince = null;
            SessionError = ($"{outcome.Code}: {outcome.Reason}", DateTimeOffset.UtcNow);
            if (outcome.Refused)
            {
                Log.Refused(_logger, outcome.Code, outcome.Reason);
                if (outcome.Code is "unknown-token" or "token-expired")
                {
                    // The device was removed or its session ran out: sign in again.
                    login = null;
                }
            }
            else
            {
                Log.SessionEnded(_logger, outcome.Code, outcome.Reason, backoff);
            }
            await DelayAsync(backoff, ct);
            backoff = Next(backoff);
        }
    }

    private readonly List<ILoopbackListener> _listeners = [];

    private string[] Listeners()
    {
        lock (_listeners)
        {
            return [.. _listeners.Select(l => $"{l.Kind} {l.LocalEndPoint}")];
        }
    }

    /// <summary>The loopback entry points applications use: SOCKS5, HTTP CONNECT and port forwards, all opening flows through the current session.</summary>
    private async Task StartListenersAsync(CancellationToken ct)
    {
        var opener = new CurrentSessionOpener(this);
        if (options.SocksPort is { } socks)
        {
            await StartListenerAsync(new Socks5Server(Routes, opener, new LoopbackProxyOptions { Port = socks }, loggers.CreateLogger<Socks5Server>()), ct);
        }
        if (options.HttpProxyPort is { } http)
        {
            await StartListenerAsync(new HttpConnectProxy(Routes, opener, new LoopbackProxyOptions { Port = http }, loggers.CreateLogger<HttpConnectProxy>()), ct);
        }
        foreach (var forward in options.Forwards)
        {
            await AddForwardAsync(forward, ct);
        }
    }

    /// <summary>Starts one more port forward in the running client ('ferry client forward'); returns where it listens.</summary>
    public async Task<string> AddForwardAsync(PortForwardSpec forward, CancellationToken ct)
    {
        ILoopbackListener listener = forward.Protocol == Ferry.Core.Flows.FlowProtocol.Udp
            ? new UdpPortForward(forward.Host, forward.Port, Routes, new CurrentSessionOpener(this), new LoopbackProxyOptions { Port = forward.LocalPort }, loggers.CreateLogger<UdpPortForward>())
            : new PortForward(forward.Host, forward.Port, Routes, new CurrentSessionOpener(this), new LoopbackProxyOptions { Port = forward.LocalPort }, loggers.CreateLogger<PortForward>());
        await StartListenerAsync(listener, ct);
        return listener.LocalEndPoint.ToString();
    }

    private async Task StartListenerAsync(ILoopbackListener listener, CancellationToken ct)
    {
        try
        {
            await listener.StartAsync(ct);
        }
        catch (System.Net.Sockets.SocketException e) when (e.SocketErrorCode == System.Net.Sockets.SocketError.AddressAlreadyInUse)
        {
            await listener.DisposeAsync();
            throw new InvalidOperationException($"cannot start the {listener.Kind} listener: its loopback port is in use by another program or forward; choose another port (0 picks a free one)", e);
        }
        lock (_listeners)
        {
            _listeners.Add(listener);
        }
        Log.Listening(_logger, listener.Kind, listener.LocalEndPoint.ToString());
    }

    /// <summary>Hands flows to whichever session is current; the listeners bound the wait for the first one with their open timeout.</summary>
    private sealed class CurrentSessionOpener(ClientDaemon daemon) : IFlowOpener
    {
        public async Task<OpenedFlow> OpenAsync(ResourceGrant resource, Ferry.Core.Flows.FlowHeader header, EarlyApplicationData? early, CancellationToken cancellationToken)
        {
            var opener = daemon.Opener ?? await daemon._firstOpener.Task.WaitAsync(cancellationToken);
            return await opener.OpenAsync(resource, header, early, cancellationToken);
        }

        public async Task<OpenedUdpFlow> OpenUdpAsync(ResourceGrant resource, Ferry.Core.Flows.FlowHeader header, CancellationToken cancellationToken)
        {
            var opener = daemon.Opener ?? await daemon._firstOpener.Task.WaitAsync(cancellationToken);
            return await opener.OpenUdpAsync(resource, header, cancellationToken);
        }
    }

    /// <summary>Connects to the relays and runs STUN from the data-plane socket.</summary>
    private void ApplyRelays(CancellationToken ct)
    {
        if (_dataPlane is not { } plane || _relays.Length == 0)
        {
            return;
        }
        var relays = _relays;
        _ = Task.Run(async () =>
        {
            try
            {
                await plane.UpdateRelaysAsync(relays, ct);
                var stun = await plane.DiscoverAsync(relays, ct);
                Log.StunResult(_logger, stun.Status, stun.MappedAddress ?? "-", stun.Error ?? "");
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or Ferry.Relay.RelayException)
            {
                // Superseded or shutting down.
            }
        }, CancellationToken.None);
    }

    private async Task<ClientLoginResult> SignInAsync(HttpClient http, CancellationToken ct)
    {
        var request = new ClientLoginRequest(options.User, options.Password, options.ServiceAccountKey, options.DeviceName, null);
        using var response = await http.PostAsJsonAsync(new Uri(options.Controller.Current, "/v1/client/login"), request, ct);
        if (!response.IsSuccessStatusCode)
        {
            var problem = await ApiProblem.ReadAsync(response, ct);
            throw new SignInRefusedException($"sign-in refused: {problem.Detail}");
        }
        var login = await response.Content.ReadFromJsonAsync<ClientLoginResult>(ct) ?? throw new InvalidDataException("empty sign-in answer");
        Log.SignedIn(_logger, options.User ?? "service account", login.Identity);
        return login;
    }

    private volatile string? _deviceToken;

    /// <summary>
    /// Passes a second-factor code to the controller, authenticated by this device's token; the controller checks it and unlocks
    /// the networks that require one. The code goes nowhere else (not to the log).
    /// </summary>
    public async Task<(DeviceMfaResult? Result, string? Refusal)> ConfirmMfaAsync(string code, CancellationToken ct)
    {
        var token = _deviceToken ?? throw new InvalidOperationException("the client has not signed in yet: wait for it to reach the controller, then try again");
        using var http = new HttpClient(options.Trust.CreateHandler()) { Timeout = TimeSpan.FromSeconds(15) };
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(options.Controller.Current, "/v1/device/mfa")) { Content = JsonContent.Create(new DeviceMfaRequest(code)) };
        request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
        using var response = await http.SendAsync(request, ct);
        if (!response.IsSuccessStatusCode)
        {
            return (null, (await ApiProblem.ReadAsync(response, ct)).Detail);
        }
        var result = await response.Content.ReadFromJsonAsync<DeviceMfaResult>(ct) ?? throw new InvalidDataException("empty answer to the second factor");
        Log.MfaConfirmed(_logger, string.Join(", ", result.Networks.Select(n => $"{n.Network} (lapses after {n.IdleTimeoutSeconds} s without traffic)")));
        return (result, null);
    }

    private void SetResources(ResourceGrant[] resources)
    {
        _resources = resources;
        Routes.Update(resources);
        Log.ResourcesChanged(_logger, resources.Length, string.Join(", ", resources.Select(r => r.Locked is null ? r.Name : $"{r.Name} (locked)")));
        foreach (var network in resources.Where(r => r.Locked is not null).GroupBy(r => r.Network))
        {
            Log.NetworkLocked(_logger, network.Key, network.First().Locked!);
        }
    }

    public ClientStatus Status() => new(
        options.Controller.Current.ToString(),
        _session?.Identity,
        _connected,
        _session?.TimeOffsetMs,
        _session?.Certificate?.Subject,
        _session?.Certificate?.Issuer,
        _session?.Certificate?.NotAfter.ToUniversalTime(),
        _resources,
        _relays,
        _dataPlane?.LastStun,
        Listeners(),
        [.. Opener?.ConnectedTo ?? []],
        [.. Opener?.Paths ?? []],
        [.. Opener?.Routes ?? []],
        options.Location?.Text,
        SessionSince,
        SessionError?.Error,
        SessionError?.At);

    /// <summary>Ready means signed in with a live controller session; null then, otherwise why not.</summary>
    private string? NotReadyBecause()
        => _session is null ? "not signed in yet" + (SessionError is { } e ? $" ({e.Error})" : "")
            : !_connected ? $"no session with the controller ({SessionError?.Error ?? "connecting"})"
            : null;

    /// <summary>Serves GET /status and /resources on a Unix socket only the owner can open.</summary>
    private async Task<WebApplication> StartControlSocketAsync(CancellationToken ct)
    {
        Directory.CreateDirectory(options.StateDirectory);
        var socketPath = ClientControl.SocketPath(options.StateDirectory);
        if (File.Exists(socketPath))
        {
            if (await ClientControl.IsAliveAsync(options.StateDirectory, ct))
            {
                throw new InvalidOperationException($"another client is running with state folder '{options.StateDirectory}'; stop it or use another --state");
            }
            File.Delete(socketPath);
        }
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        // The embedded host must not take SIGTERM/SIGINT for itself: the daemon's cancellation stops everything, this host included.
        builder.Services.AddSingleton<Microsoft.Extensions.Hosting.IHostLifetime, EmbeddedHostLifetime>();
        builder.WebHost.ConfigureKestrel(k => k.ListenUnixSocket(socketPath));
        var app = builder.Build();
        app.MapGet("/status", () => Results.Ok(Status()));
        app.MapGet("/resources", () => Results.Ok(_resources));
        app.MapPost("/mfa", async (MfaRequest request) =>
        {
            try
            {
                var (result, refusal) = await ConfirmMfaAsync(request.Code, ct);
                return result is not null ? Results.Ok(result) : Results.Problem(refusal, statusCode: StatusCodes.Status400BadRequest);
            }
            catch (Exception e) when (e is InvalidOperationException or HttpRequestException or TaskCanceledException)
            {
                return Results.Problem($"cannot reach the controller to check the code: {e.Message}", statusCode: StatusCodes.Status502BadGateway);
            }
        });
        app.MapPost("/forwards", async (ForwardRequest request) =>
        {
            try
            {
                return Results.Ok(new ForwardAdded(await AddForwardAsync(PortForwardSpec.Parse(request.Spec), ct)));
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException)
            {
                return Results.Problem(e.Message, statusCode: StatusCodes.Status400BadRequest);
            }
        });
        await app.StartAsync(ct);
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(socketPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }
        Log.ControlSocket(_logger, socketPath);
        return app;
    }

    private static async Task DelayAsync(TimeSpan delay, CancellationToken ct)
    {
        try
        {
            await Task.Delay(delay, ct);
        }
        catch (OperationCanceledException)
        {
        }
    }

    private static TimeSpan Next(TimeSpan backoff) => TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, TimeSpan.FromSeconds(30).Ticks));
}

/// <summary>A host lifetime that leaves process signals to the command line, for web hosts embedded in a daemon.</summary>
internal sealed class EmbeddedHostLifetime : Microsoft.Extensions.Hosting.IHostLifetime
{
    public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}

/// <summary>Talks to a running client over its control socket.</summary>
public static class ClientControl
{
    public static string SocketPath(string stateDirectory) => Path.Combine(Path.GetFullPath(stateDirectory), "client.sock");

    public static HttpClient Connect(string stateDirectory)
    {
        var path = SocketPath(stateDirectory);
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, token) =>
            {
                var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(path), token);
                    return new System.Net.Sockets.NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        };
        return new HttpClient(handler) { BaseAddress = new Uri("http://ferry-client"), Timeout = TimeSpan.FromSeconds(10) };
    }

    public static async Task<bool> IsAliveAsync(string stateDirectory, CancellationToken ct)
    {
        try
        {
            using var http = Connect(stateDirectory);
            using var response = await http.GetAsync("/status", ct);
            return response.IsSuccessStatusCode;
        }
        catch (Exception e) when (e is HttpRequestException or System.Net.Sockets.SocketException or TaskCanceledException)
        {
            return false;
        }
    }
}
