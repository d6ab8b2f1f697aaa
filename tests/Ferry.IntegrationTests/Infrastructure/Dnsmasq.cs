using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Ferry.IntegrationTests.Infrastructure;

/// <summary>A real DNS server (dnsmasq) on a free loopback UDP port, answering fixed names; killed on dispose.</summary>
public sealed class Dnsmasq : IAsyncDisposable
{
    private readonly Process _process;

    private Dnsmasq(Process process, int port)
    {
        _process = process;
        Port = port;
    }

    public int Port { get; }

    public IPEndPoint EndPoint => new(IPAddress.Loopback, Port);

    public static bool IsInstalled => File.Exists("/usr/sbin/dnsmasq");

    /// <summary>Starts dnsmasq answering each name in <paramref name="records"/> with its address, and nothing else.</summary>
    public static async Task<Dnsmasq> StartAsync(IReadOnlyDictionary<string, string> records, CancellationToken ct)
    {
        // dnsmasq listens on UDP and TCP; a port free for one may be taken for the other by the time it binds, so a few tries.
        const int Attempts = 4;
        for (var attempt = 1; ; attempt++)
        {
            var (server, log) = await TryStartAsync(FreePort(), records, ct);
            if (server is not null)
            {
                return server;
            }
            if (attempt == Attempts || !log.Contains("Address already in use", StringComparison.Ordinal))
            {
                throw new Xunit.Sdk.XunitException($"dnsmasq did not start (attempt {attempt}):\n{log}");
            }
        }
    }

    private static int FreePort()
    {
        using var tcp = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        tcp.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var port = ((IPEndPoint)tcp.LocalEndPoint!).Port;
        using var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        udp.Bind(new IPEndPoint(IPAddress.Loopback, port));
        return port;
    }

    private static async Task<(Dnsmasq? Server, string Log)> TryStartAsync(int port, IReadOnlyDictionary<string, string> records, CancellationToken ct)
    {
        var info = new ProcessStartInfo("/usr/sbin/dnsmasq") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var arg in new[] { "--no-daemon", "--conf-file=/dev/null", "--pid-file=", $"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts", "--log-facility=-" })
        {
            info.ArgumentList.Add(arg);
        }
        foreach (var (name, address) in records)
        {
            info.ArgumentList.Add($"--address=/{name}/{address}");
        }
        var process = Process.Start(info)!;
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var log = new System.Text.StringBuilder();
        process.ErrorDataReceived += (_, e) =>
        {
            lock (log)
            {
                log.AppendLine(e.Data);
            }
            if (e.Data?.Contains("started, version", StringComparison.Ordinal) == true)
            {
                started.TrySetResult();
            }
        };
        process.BeginErrorReadLine();
        var server = new Dnsmasq(process, port);
        var exited = process.WaitForExitAsync(ct);
        if (await Task.WhenAny(started.Task, exited, Task.Delay(TimeSpan.FromSeconds(10), ct)) == started.Task)
        {
            return (server, "");
        }
        await server.DisposeAsync();
        lock (log)
        {
            return (null, $"port {port}: {log}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill();
            await _process.WaitForExitAsync();
        }
        _process.Dispose();
    }
}
