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
        int port;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }
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
        try
        {
            await started.Task.WaitAsync(TimeSpan.FromSeconds(10), ct);
        }
        catch (TimeoutException)
        {
            await server.DisposeAsync();
            lock (log)
            {
                throw new Xunit.Sdk.XunitException($"dnsmasq did not start on port {port}:\n{log}");
            }
        }
        return server;
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
