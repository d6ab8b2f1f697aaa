using System.Net.Sockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Ferry.Core.Operations;

/// <summary>
/// A daemon's local control socket: '&lt;state&gt;/&lt;kind&gt;.sock', owner-only, answering GET /status with JSON. The client,
/// connector and relay all use it, and 'ferry status' asks it.
/// </summary>
public static partial class LocalControl
{
    /// <summary>The state folder a daemon of <paramref name="kind"/> uses when none is given: FERRY_&lt;KIND&gt;_STATE, else ~/.ferry/&lt;kind&gt;.</summary>
    public static string DefaultStateDirectory(string kind)
        => Environment.GetEnvironmentVariable($"FERRY_{kind.ToUpperInvariant()}_STATE") is { Length: > 0 } set
            ? set
            // DoNotVerify: a home that does not exist yet must not turn the default into a folder relative to the working directory.
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile, Environment.SpecialFolderOption.DoNotVerify), ".ferry", kind);

    public static string SocketPath(string stateDirectory, string kind) => Path.Combine(Path.GetFullPath(stateDirectory), kind + ".sock");

    /// <summary>An HTTP client whose every request goes to the control socket of <paramref name="kind"/> in <paramref name="stateDirectory"/>.</summary>
    public static HttpClient Connect(string stateDirectory, string kind)
    {
        var path = SocketPath(stateDirectory, kind);
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, token) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), token);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        };
        return new HttpClient(handler) { BaseAddress = new Uri($"http://ferry-{kind}"), Timeout = TimeSpan.FromSeconds(10) };
    }

    /// <summary>The daemon's /status as JSON text, or null when nothing answers on its socket.</summary>
    public static async Task<string?> AskStatusAsync(string stateDirectory, string kind, CancellationToken ct)
    {
        if (!File.Exists(SocketPath(stateDirectory, kind)))
        {
            return null;
        }
        try
        {
            using var http = Connect(stateDirectory, kind);
            using var response = await http.GetAsync("/status", ct);
            return response.IsSuccessStatusCode ? await response.Content.ReadAsStringAsync(ct) : null;
        }
        catch (Exception e) when (e is HttpRequestException or SocketException or TaskCanceledException)
        {
            return null;
        }
    }

    /// <summary>
    /// Serves GET /status on the control socket of <paramref name="kind"/>; refuses to start when another daemon answers
    /// there, since two daemons sharing a state folder would each hide the other.
    /// </summary>
    public static async Task<WebApplication> StartAsync(string stateDirectory, string kind, Func<object> status, ILogger logger, CancellationToken ct)
    {
        try
        {
            Directory.CreateDirectory(stateDirectory);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidOperationException($"cannot create the state folder '{stateDirectory}' for the {kind}'s control socket ({e.Message}): give a writable one with --state or FERRY_{kind.ToUpperInvariant()}_STATE", e);
        }
        var socketPath = SocketPath(stateDirectory, kind);
        if (File.Exists(socketPath))
        {
            if (await AskStatusAsync(stateDirectory, kind, ct) is not null)
            {
                throw new InvalidOperationException($"another {kind} is running with state folder '{stateDirectory}'; stop it or give this one its own --state");
            }
            File.Delete(socketPath);
        }
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton<IHostLifetime, EmbeddedHostLifetime>();
        builder.WebHost.ConfigureKestrel(k => k.ListenUnixSocket(socketPath));
        var app = builder.Build();
        app.MapGet("/status", () => Results.Json(status()));
        await app.StartAsync(ct);
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(socketPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }
        LogControlSocket(logger, socketPath);
        return app;
    }

    [LoggerMessage(1101, LogLevel.Information, "Local control socket at {Path}")]
    private static partial void LogControlSocket(ILogger logger, string path);
}
