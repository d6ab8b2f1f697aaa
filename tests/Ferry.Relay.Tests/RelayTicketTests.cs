using System.Buffers.Text;
using System.Security.Cryptography;
using Ferry.Relay.Tests.Support;
using Microsoft.Extensions.Time.Testing;

namespace Ferry.Relay.Tests;

public sealed class RelayTicketTests : IDisposable
{
    private readonly ECDsa _ca = ECDsa.Create(ECCurve.NamedCurves.nistP256);
    private readonly ECDsa _otherCa = ECDsa.Create(ECCurve.NamedCurves.nistP256);
    private readonly FakeTimeProvider _clock = new(new DateTimeOffset(2026, 11, 23, 12, 0, 0, TimeSpan.Zero));

    public void Dispose()
    {
        _ca.Dispose();
        _otherCa.Dispose();
    }

    [Fact]
    public void IssuedTicketVerifiesAndNamesBothPeersInEitherOrder()
    {
        var notAfter = _clock.GetUtcNow().AddMinutes(5);
        var ab = RelayTicket.Issue(_ca, "device/dv_91c0", "connector/cn_4f2a", notAfter);
        var ba = RelayTicket.Issue(_ca, "connector/cn_4f2a", "device/dv_91c0", notAfter);

        Assert.True(RelayTicket.TryVerify(ab.Text, _ca, _clock, out var ticket, out var error), error);
        Assert.Equal("connector/cn_4f2a", ticket.PeerA);
        Assert.Equal("device/dv_91c0", ticket.PeerB);
        Assert.Equal(ba.PeerA, ab.PeerA);
        Assert.Equal(notAfter.ToUnixTimeSeconds(), ticket.NotAfter.ToUnixTimeSeconds());
        Assert.Equal(32, ticket.Id.Length);
        Assert.NotEqual(ab.Id, ba.Id);
        Assert.Equal("device/dv_91c0", ticket.OtherPeer("connector/cn_4f2a"));
        Assert.Null(ticket.OtherPeer("device/other"));

        // base64url: no padding, no '+' or '/'.
        Assert.DoesNotContain('=', ab.Text);
        Assert.DoesNotContain('+', ab.Text);
        Assert.DoesNotContain('/', ab.Text);
        Assert.Equal(RelayTicket.CurrentVersion, Base64Url.DecodeFromChars(ab.Text)[0]);
    }

    [Fact]
    public void SignatureFromAnotherKeyIsRefused()
    {
        var forged = RelayTicket.Issue(_otherCa, "device/a", "connector/b", _clock.GetUtcNow().AddMinutes(5));
        Assert.Equal(RelayRefusal.TicketBadSignature, RelayTicket.Verify(forged.Text, _ca, _clock, out _, out var error));
        Assert.Contains("signature", error, StringComparison.Ordinal);
        Assert.False(RelayTicket.TryVerify(forged.Text, _ca, _clock, out _, out _));
    }

    [Fact]
    public void ExpiryAllowsFiveSecondsOfClockSkewAndNoMore()
    {
        var ticket = RelayTicket.Issue(_ca, "device/a", "connector/b", _clock.GetUtcNow().AddSeconds(10));
        Assert.True(RelayTicket.TryVerify(ticket.Text, _ca, _clock, out _, out _));

        _clock.Advance(TimeSpan.FromSeconds(15));
        Assert.True(RelayTicket.TryVerify(ticket.Text, _ca, _clock, out _, out var error), error);

        _clock.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(RelayRefusal.TicketExpired, RelayTicket.Verify(ticket.Text, _ca, _clock, out _, out error));
        Assert.Contains("expired", error, StringComparison.Ordinal);
    }

    [Fact]
    public void PresenterMustBeOneOfTheNamedPeers()
    {
        var ticket = RelayTicket.Issue(_ca, "device/a", "connector/b", _clock.GetUtcNow().AddMinutes(5));
        Assert.True(RelayTicket.TryVerifyFor(ticket.Text, "device/a", _ca, _clock, out _, out _));
        Assert.True(RelayTicket.TryVerifyFor(ticket.Text, "connector/b", _ca, _clock, out _, out _));
        Assert.Equal(RelayRefusal.TicketNotForPresenter, RelayTicket.VerifyFor(ticket.Text, "device/c", _ca, _clock, out _, out var error));
        Assert.Contains("device/c", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("")]
    [InlineData("not a ticket")]
    [InlineData("AAAA")]
    [InlineData("AQ")]
    [InlineData("!!!!")]
    public void MalformedTextIsRefusedWithoutThrowing(string text)
    {
        Assert.Equal(RelayRefusal.TicketMalformed, RelayTicket.Verify(text, _ca, _clock, out var ticket, out var error));
        Assert.Null(ticket);
        Assert.StartsWith("malformed", error, StringComparison.Ordinal);
    }

    [Fact]
    public void EveryMutationOfAValidTicketIsRefusedWithoutThrowing()
    {
        const int seed = 7_331;
        Bounded.Log($"seed {seed}");
        var random = new Random(seed);
        var good = Base64Url.DecodeFromChars(RelayTicket.Issue(_ca, "device/a", "connector/b", _clock.GetUtcNow().AddMinutes(5)).Text);
        for (var i = 0; i < 2_000; i++)
        {
            var bytes = (byte[])good.Clone();
            switch (random.Next(4))
            {
                case 0:
                    bytes[random.Next(bytes.Length)] ^= (byte)(1 << random.Next(8));
                    break;
                case 1:
                    bytes = bytes[..random.Next(bytes.Length)];
                    break;
                case 2:
                    bytes = [.. bytes, (byte)random.Next(256)];
                    break;
                default:
                    random.NextBytes(bytes.AsSpan(random.Next(bytes.Length)));
                    break;
            }

            var refusal = RelayTicket.Verify(Base64Url.EncodeToString(bytes), _ca, _clock, out _, out _);
            if (bytes.AsSpan().SequenceEqual(good))
            {
                Assert.Equal(RelayRefusal.None, refusal);
            }
            else
            {
                Assert.NotEqual(RelayRefusal.None, refusal);
            }
        }
    }

    [Fact]
    public void IssueRejectsBadIdentitiesAndSamePeerTwice()
    {
        var notAfter = _clock.GetUtcNow().AddMinutes(1);
        Assert.Throws<ArgumentException>(() => RelayTicket.Issue(_ca, "device", "connector/b", notAfter));
        Assert.Throws<ArgumentException>(() => RelayTicket.Issue(_ca, "device/a/b", "connector/b", notAfter));
        Assert.Throws<ArgumentException>(() => RelayTicket.Issue(_ca, "device/a", "device/a", notAfter));
        Assert.Throws<ArgumentException>(() => RelayTicket.Issue(_ca, "device/ä", "connector/b", notAfter));
    }
}
