using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Ferry.Quic.Tests;

/// <summary>Ferry's client against Debian's gtlsserver while the server itself drops 5 % of what it sends and receives.</summary>
public sealed class InteropLossTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);
    private readonly TestPki _pki = new();
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("ferry-h3-loss-");

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Ferry_client_downloads_several_MiB_from_gtlsserver_with_five_percent_loss_each_way()
    {
        Assert.SkipUnless(QuicSupport.IsSupported, QuicSupport.NotSupportedReason ?? "");
        var gtlsserver = ProcessRunner.FindOnPath("gtlsserver");
        Assert.SkipWhen(gtlsserver is null, "gtlsserver not found; install the Debian package ngtcp2-server to run QUIC interop tests");

        await using var server = await GtlsServer.StartAsync(_pki, _dir, 8 << 20, 13, ["--tx-loss=0.05", "--rx-loss=0.05"], Ct);
        await using var endpoint = QuicEndpoint.Bind(new QuicEndpointOptions { LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0) });
        var watch = Stopwatch.StartNew();

        // Lost handshake packets are recovered by PTO; the client keeps retransmitting until the server answers.
        await using var connection = await server.ConnectAsync(endpoint, _pki, TimeSpan.FromSeconds(30), Ct);
        var handshake = watch.Elapsed;
        var stats = connection.GetStatistics();
        await server.DownloadAndCheckAsync(connection, Ct);
        Report($"gtlsserver --tx-loss=0.05 --rx-loss=0.05: handshake {handshake.TotalMilliseconds:F0} ms, 8 MiB in {watch.Elapsed.TotalSeconds:F1} s; {stats}");

        // Without -q gtlsserver says each time it drops a packet: proof that the loss really happened.
        var log = await server.StopAsync();
        int txLost = CountOf(log, "Simulated outgoing packet loss");
        int rxLost = CountOf(log, "Simulated incoming packet loss");
        Report($"gtlsserver dropped {txLost} outgoing and {rxLost} incoming packets");
        Assert.True(txLost > 0 && rxLost > 0, "gtlsserver simulated no loss");
    }

    public void Dispose()
    {
        _pki.Dispose();
        _dir.Delete(recursive: true);
    }

    private static int CountOf(string text, string what)
    {
        int count = 0;
        for (int i = text.IndexOf(what, StringComparison.Ordinal); i >= 0; i = text.IndexOf(what, i + what.Length, StringComparison.Ordinal))
        {
            count++;
        }

        return count;
    }

    private static void Report(string line)
    {
        TestContext.Current.TestOutputHelper?.WriteLine(line);
        TestContext.Current.SendDiagnosticMessage(line);
    }
}
