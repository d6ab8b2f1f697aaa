using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Ferry.Quic.Tests;

/// <summary>Ferry's client against an independent QUIC peer: Debian's ngtcp2 gtlsserver speaking HTTP/3.</summary>
public sealed class InteropTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private readonly TestPki _pki = new();
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("ferry-h3-");

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Ferry_client_downloads_a_file_over_http3_from_gtlsserver(bool serverSendsRetry)
    {
        Assert.SkipUnless(QuicSupport.IsSupported, QuicSupport.NotSupportedReason ?? "");
        var gtlsserver = ProcessRunner.FindOnPath("gtlsserver");
        Assert.SkipWhen(gtlsserver is null, "gtlsserver not found; install the Debian package ngtcp2-server to run QUIC interop tests");

        await using var server = await GtlsServer.StartAsync(_pki, _dir, 6 << 20, 9, serverSendsRetry ? ["-V", "-q"] : ["-q"], Ct);
        await using var endpoint = QuicEndpoint.Bind(new QuicEndpointOptions { LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0) });
        await using var connection = await server.ConnectAsync(endpoint, _pki, TimeSpan.FromSeconds(15), Ct);
        Assert.Equal("localhost", connection.RemoteIdentity);
        await server.DownloadAndCheckAsync(connection, Ct);
    }

    [Theory]
    [InlineData("")]
    [InlineData("--key-update=30ms")]
    [InlineData("--change-local-addr=30ms")]
    // Not "--nat-rebinding": gtlsclient 0.12.1 then ignores packets on its old socket and, with nothing of its own
    // in flight during a download, never sends from the new one, so the server cannot learn the new address.
    public async Task Gtlsclient_downloads_a_file_over_http3_from_a_ferry_server_with_mutual_tls(string extra)
    {
        Assert.SkipUnless(QuicSupport.IsSupported, QuicSupport.NotSupportedReason ?? "");
        var gtlsclient = ProcessRunner.FindOnPath("gtlsclient");
        Assert.SkipWhen(gtlsclient is null, "gtlsclient not found; install the Debian package ngtcp2-client to run QUIC interop tests");

        using var clientCert = _pki.Issue("gtlsclient");
        var keyPath = Path.Combine(_dir.FullName, "client.key");
        var certPath = Path.Combine(_dir.FullName, "client.crt");
        using (var key = clientCert.GetECDsaPrivateKey()!)
        {
            await File.WriteAllTextAsync(keyPath, key.ExportPkcs8PrivateKeyPem(), Ct);
        }

        await File.WriteAllTextAsync(certPath, clientCert.ExportCertificatePem(), Ct);
        var download = Directory.CreateDirectory(Path.Combine(_dir.FullName, "download"));
        var body = new byte[16 << 20];
        new Random(11).NextBytes(body);

        await using var endpoint = QuicEndpoint.Bind(new QuicEndpointOptions
        {
            LocalEndPoint = new IPEndPoint(IPAddress.Loopback, 0),
            ServerTls = new QuicTlsOptions { Certificate = _pki.Issue("localhost"), TrustedCa = _pki.Ca, ApplicationProtocols = ["h3"] },
        });
        var port = endpoint.LocalEndPoint.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var client = ProcessRunner.RunAsync(gtlsclient!,
            extra.Split(' ', StringSplitOptions.RemoveEmptyEntries).Concat(
            [Environment.GetEnvironmentVariable("FERRY_GTLS_VERBOSE") is null ? "-q" : "--no-http-dump", "--no-quic-dump", "--no-http-dump", "--exit-on-all-streams-close", "--key", keyPath, "--cert", certPath,
             "--download", download.FullName, "127.0.0.1", port, $"https://127.0.0.1:{port}/blob.bin"]),
            Timeout);

        await using var connection = await endpoint.AcceptConnectionAsync(Ct).AsTask().WaitAsync(Timeout, Ct);
        Assert.Equal("h3", connection.NegotiatedApplicationProtocol);
        Assert.Equal("gtlsclient", connection.RemoteIdentity);
        var serve = Http3Client.ServeAsync(connection, body, Ct);

        var (exit, stdout, stderr) = await client.WaitAsync(Timeout, Ct);
        Assert.True(exit == 0, $"gtlsclient exited with {exit}: {stderr} {stdout}");
        await serve.WaitAsync(Timeout, Ct);
        var downloaded = await File.ReadAllBytesAsync(Path.Combine(download.FullName, "blob.bin"), Ct);
        Assert.Equal(body.Length, downloaded.Length);
        Assert.Equal(SHA256.HashData(body), SHA256.HashData(downloaded));
    }

    public void Dispose()
    {
        _pki.Dispose();
        _dir.Delete(recursive: true);
    }
}
