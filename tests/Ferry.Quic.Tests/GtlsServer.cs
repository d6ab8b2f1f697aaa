using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Ferry.Quic.Tests;

/// <summary>Debian's gtlsserver on loopback serving one random file over HTTP/3 with a certificate from the test CA; killed on dispose.</summary>
internal sealed class GtlsServer : IAsyncDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);
    private readonly Process _process;
    private readonly Task<string> _stdout;
    private readonly Task<string> _stderr;

    private GtlsServer(Process process, int port, byte[] payload)
    {
        _process = process;
        Port = port;
        Payload = payload;
        _stdout = process.StandardOutput.ReadToEndAsync();
        _stderr = process.StandardError.ReadToEndAsync();
    }

    public int Port { get; }

    /// <summary>The bytes of /blob.bin, to check a download against.</summary>
    public byte[] Payload { get; }

    public static string? Binary => ProcessRunner.FindOnPath("gtlsserver");

    public static async Task<GtlsServer> StartAsync(TestPki pki, DirectoryInfo dir, int payloadSize, int seed, IEnumerable<string> options, CancellationToken ct)
    {
        using var serverCert = pki.Issue("localhost");
        var keyPath = Path.Combine(dir.FullName, "server.key");
        var certPath = Path.Combine(dir.FullName, "server.crt");
        using (var key = serverCert.GetECDsaPrivateKey()!)
        {
            await File.WriteAllTextAsync(keyPath, key.ExportPkcs8PrivateKeyPem(), ct);
        }
        await File.WriteAllTextAsync(certPath, serverCert.ExportCertificatePem(), ct);
        var htdocs = Directory.CreateDirectory(Path.Combine(dir.FullName, "htdocs"));
        var payload = new byte[payloadSize];
        new Random(seed).NextBytes(payload);
        await File.WriteAllBytesAsync(Path.Combine(htdocs.FullName, "blob.bin"), payload, ct);

        var port = FreeUdpPort();
        var psi = new ProcessStartInfo(Binary!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in options.Concat(["--no-quic-dump", "--no-http-dump", "-d", htdocs.FullName, "127.0.0.1", port.ToString(CultureInfo.InvariantCulture), keyPath, certPath]))
        {
            psi.ArgumentList.Add(a);
        }
        return new GtlsServer(Process.Start(psi)!, port, payload);
    }

    /// <summary>Connects with ALPN h3; no wait for the server to start, the client retransmits its Initial until it answers.</summary>
    public async Task<QuicConnection> ConnectAsync(QuicEndpoint endpoint, TestPki pki, TimeSpan handshakeTimeout, CancellationToken ct)
    {
        var tls = new QuicTlsOptions
        {
            Certificate = pki.Issue("ferry-interop-client"),
            TrustedCa = pki.Ca,
            ApplicationProtocols = ["h3"],
            ServerName = "localhost",
        };
        try
        {
            return await endpoint.ConnectAsync(new IPEndPoint(IPAddress.Loopback, Port), tls, new QuicConnectionOptions { HandshakeTimeout = handshakeTimeout }, ct).AsTask().WaitAsync(Timeout, ct);
        }
        catch (Exception e) when (_process.HasExited)
        {
            throw new InvalidOperationException($"gtlsserver exited with {_process.ExitCode}: {await _stderr.WaitAsync(Timeout, ct)}", e);
        }
    }

    /// <summary>GETs /blob.bin over HTTP/3 and checks status, length and every byte.</summary>
    public async Task DownloadAndCheckAsync(QuicConnection connection, CancellationToken ct)
    {
        Assert.Equal("h3", connection.NegotiatedApplicationProtocol);
        await using var control = await Http3Client.OpenControlStreamAsync(connection, ct).WaitAsync(Timeout, ct);
        var (status, sha, length) = await Http3Client.GetAsync(connection, $"localhost:{Port}", "/blob.bin", ct).WaitAsync(Timeout, ct);
        Assert.Equal(200, status);
        Assert.Equal(Payload.Length, length);
        Assert.Equal(SHA256.HashData(Payload), sha);
        await connection.CloseAsync(0x100 /* H3_NO_ERROR */, null, ct).AsTask().WaitAsync(Timeout, ct);
    }

    /// <summary>Stops the server and returns everything it printed.</summary>
    public async Task<string> StopAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }
        await _process.WaitForExitAsync().WaitAsync(Timeout);
        return await _stdout.WaitAsync(Timeout) + await _stderr.WaitAsync(Timeout);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        _process.Dispose();
    }

    private static int FreeUdpPort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }
}
